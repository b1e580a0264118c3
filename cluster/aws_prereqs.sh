#!/usr/bin/env bash
# One-time AWS setup for cluster/gpu.yaml. Idempotent: safe to run again (for
# example when your public IP changes: the new /32 is added to the SSH rule).
#
#   bash cluster/aws_prereqs.sh YOUR.PUBLIC.IP.ADDR/32 [REGION]
#
# Needs the AWS CLI v2 and credentials allowed to manage EC2 security groups
# and IAM roles. It does two things:
#
# 1. Security group "infoprompt-search-ray" in the region's default VPC with
#    exactly two inbound rules: TCP 22 from the CIDR you give, and all traffic
#    from members of the group itself (Ray's GCS, object manager and workers
#    talking to each other). gpu.yaml names this group in every node type's
#    SecurityGroupIds, so `ray up` never creates its own group (Ray's own
#    groups always get SSH open to the whole internet).
# 2. IAM: the instance profile/role "ray-autoscaler-v1" that Ray gives the
#    head node (EC2 + S3 access, the same policies Ray attaches when it creates
#    it), plus an inline iam:PassRole on that role, so the head may launch the
#    GPU workers with the same profile (they write checkpoints to S3).
set -euo pipefail

die() { echo "aws_prereqs.sh: $*" >&2; exit 1; }

CIDR="${1:-}"
REGION="${2:-us-west-2}"
GROUP_NAME="infoprompt-search-ray"
PROFILE="ray-autoscaler-v1"
PLACEHOLDER="sg-REPLACE-WITH-GROUP-ID-FROM-aws_prereqs.sh"

[[ -n "$CIDR" ]] || die "usage: bash cluster/aws_prereqs.sh YOUR.PUBLIC.IP.ADDR/32 [REGION]
  (your public IP: curl -s https://checkip.amazonaws.com)"
[[ "$CIDR" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]{1,2})$ ]] \
    || die "'$CIDR' is not an IPv4 CIDR like 198.51.100.7/32"
PREFIX="${BASH_REMATCH[2]}"
(( PREFIX >= 16 && PREFIX <= 32 )) \
    || die "refusing /$PREFIX: SSH must be open to your own address (/32) or a small range"
command -v aws >/dev/null || die "the AWS CLI is not installed"

export AWS_DEFAULT_REGION="$REGION"

# --- 1. security group --------------------------------------------------------
VPC=$(aws ec2 describe-vpcs --filters Name=isDefault,Values=true \
        --query 'Vpcs[0].VpcId' --output text)
[[ "$VPC" != "None" && -n "$VPC" ]] \
    || die "no default VPC in $REGION; create the group by hand in your VPC"

SG=$(aws ec2 describe-security-groups \
        --filters "Name=vpc-id,Values=$VPC" "Name=group-name,Values=$GROUP_NAME" \
        --query 'SecurityGroups[0].GroupId' --output text)
if [[ "$SG" == "None" || -z "$SG" ]]; then
    SG=$(aws ec2 create-security-group --group-name "$GROUP_NAME" --vpc-id "$VPC" \
            --description "infoprompt-search Ray cluster: SSH from operator, intra-cluster" \
            --query GroupId --output text)
    echo "created security group $SG in $VPC"
    aws ec2 authorize-security-group-ingress --group-id "$SG" --ip-permissions \
        "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG,Description=intra-cluster}]" \
        >/dev/null
else
    echo "security group $SG already exists in $VPC"
fi
# SSH from the operator's CIDR (a duplicate rule is not an error here).
if ! out=$(aws ec2 authorize-security-group-ingress --group-id "$SG" --ip-permissions \
        "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$CIDR,Description=ssh-from-operator}]" \
        2>&1 >/dev/null); then
    [[ "$out" == *InvalidPermission.Duplicate* ]] || die "$out"
fi
# Refuse to continue if anything in the group is open to the world.
OPEN=$(aws ec2 describe-security-groups --group-ids "$SG" --query \
        'SecurityGroups[0].IpPermissions[].[IpRanges[].CidrIp, Ipv6Ranges[].CidrIpv6][][]' \
        --output text)
for range in $OPEN; do
    case "$range" in
        */0) die "group $SG has an inbound rule from $range; remove it (aws ec2 revoke-security-group-ingress)";;
    esac
done

# --- 2. IAM role / instance profile for head and workers ----------------------
ACCOUNT=$(aws sts get-caller-identity --query Account --output text)
if ! aws iam get-instance-profile --instance-profile-name "$PROFILE" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$PROFILE" >/dev/null
    echo "created instance profile $PROFILE"
fi
ROLE=$(aws iam get-instance-profile --instance-profile-name "$PROFILE" \
        --query 'InstanceProfile.Roles[0].RoleName' --output text)
if [[ "$ROLE" == "None" || -z "$ROLE" ]]; then
    ROLE="$PROFILE"
    if ! aws iam get-role --role-name "$ROLE" >/dev/null 2>&1; then
        aws iam create-role --role-name "$ROLE" --assume-role-policy-document \
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}' \
            >/dev/null
        for policy in AmazonEC2FullAccess AmazonS3FullAccess; do
            aws iam attach-role-policy --role-name "$ROLE" \
                --policy-arn "arn:aws:iam::aws:policy/$policy"
        done
        echo "created role $ROLE"
    fi
    aws iam add-role-to-instance-profile --instance-profile-name "$PROFILE" --role-name "$ROLE"
fi
aws iam put-role-policy --role-name "$ROLE" --policy-name ray-pass-own-role \
    --policy-document "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iam:PassRole\",\"Resource\":\"arn:aws:iam::$ACCOUNT:role/$ROLE\"}]}"
echo "role $ROLE (profile $PROFILE) may pass itself to the worker nodes"

cat <<EOF

Done. Put the security group into cluster/gpu.yaml (all three node types):

    sed -i.bak 's/$PLACEHOLDER/$SG/' cluster/gpu.yaml

and check that provider.region in cluster/gpu.yaml is $REGION.
EOF
