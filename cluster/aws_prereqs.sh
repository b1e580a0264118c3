#!/usr/bin/env bash
# One-time AWS setup for cluster/gpu.yaml. Idempotent: safe to run again (for
# example when your public IP changes: the new /32 is added to the SSH rule).
#
#   bash cluster/aws_prereqs.sh YOUR.PUBLIC.IP.ADDR/32 BUCKET [REGION]
#
# BUCKET is the name (no s3://) of the S3 bucket that --storage-path points
# into. Needs the AWS CLI v2 and credentials allowed to manage EC2 security
# groups and IAM roles. It does two things:
#
# 1. Security group "infoprompt-search-ray" in the region's default VPC with
#    exactly two inbound rules: TCP 22 from the CIDR you give, and all traffic
#    from members of the group itself (Ray's GCS, object manager and workers
#    talking to each other). gpu.yaml names this group in every node type's
#    SecurityGroupIds, so `ray up` never creates its own group (Ray's own
#    groups always get SSH open to the whole internet).
# 2. IAM, least privilege: two roles, each in an instance profile of the same
#    name, with inline policies rendered from cluster/iam/*.json (the
#    __BUCKET__, __ACCOUNT__, __REGION__ and __WORKER_ROLE__ placeholders
#    filled in below) and no managed policies:
#    - infoprompt-search-ray-worker (GPU workers, which run trial code):
#      bucket-policy.json only, i.e. list the results bucket and read, write
#      and delete objects in it. No EC2 and no IAM rights at all.
#    - infoprompt-search-ray-head (head: autoscaler and search driver):
#      bucket-policy.json, plus autoscaler-policy.json: launch instances,
#      tag and terminate only instances tagged ray-cluster-name=
#      infoprompt-search, describe instances, and iam:PassRole for the
#      worker role only.
#    gpu.yaml names the head profile in the head's node_config (so Ray does
#    not create its default ray-autoscaler-v1 profile, which has full EC2
#    and S3 access) and the worker profile in every worker type.
set -euo pipefail

die() { echo "aws_prereqs.sh: $*" >&2; exit 1; }

CIDR="${1:-}"
BUCKET="${2:-}"
REGION="${3:-us-west-2}"
GROUP_NAME="infoprompt-search-ray"
HEAD_PROFILE="infoprompt-search-ray-head"
WORKER_PROFILE="infoprompt-search-ray-worker"
# Inline policies per role: cluster/iam/NAME-policy.json, put on the role as
# "infoprompt-search-NAME". The head may do what a worker may, and autoscale.
HEAD_POLICIES=(bucket autoscaler)
WORKER_POLICIES=(bucket)
PLACEHOLDER="sg-REPLACE-WITH-GROUP-ID-FROM-aws_prereqs.sh"
IAM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/iam"

[[ -n "$CIDR" && -n "$BUCKET" ]] || die "usage: bash cluster/aws_prereqs.sh YOUR.PUBLIC.IP.ADDR/32 BUCKET [REGION]
  (your public IP: curl -s https://checkip.amazonaws.com; BUCKET: the results bucket, no s3://)"
[[ "$CIDR" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]{1,2})$ ]] \
    || die "'$CIDR' is not an IPv4 CIDR like 198.51.100.7/32"
PREFIX="${BASH_REMATCH[2]}"
(( PREFIX >= 16 && PREFIX <= 32 )) \
    || die "refusing /$PREFIX: SSH must be open to your own address (/32) or a small range"
# S3 bucket names: 3-63 characters of a-z 0-9 . -, a letter or digit at both
# ends, no "..", not an IP address. A region name is refused too: that is the
# old argument order (CIDR REGION), which would scope the policies to a
# bucket named like the region.
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ && "$BUCKET" != *..* \
    && ! "$BUCKET" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ \
    && ! "$BUCKET" =~ ^[a-z]{2}(-gov)?-[a-z]+-[0-9]$ ]] \
    || die "'$BUCKET' is not an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-'; no s3://); usage: bash cluster/aws_prereqs.sh YOUR.IP/32 BUCKET [REGION]"
[[ "$REGION" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "'$REGION' is not an AWS region like us-west-2"
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

# --- 2. IAM roles / instance profiles: head and workers ----------------------
ACCOUNT=$(aws sts get-caller-identity --query Account --output text)
[[ "$ACCOUNT" =~ ^[0-9]{12}$ ]] || die "unexpected AWS account id '$ACCOUNT'"
HEAD_ROLE="$HEAD_PROFILE"
WORKER_ROLE="$WORKER_PROFILE"

# cluster/iam/$1 with its placeholders filled in (the values are validated
# above, so none of them contains a sed metacharacter).
render() {
    sed -e "s/__BUCKET__/$BUCKET/g" -e "s/__ACCOUNT__/$ACCOUNT/g" \
        -e "s/__REGION__/$REGION/g" -e "s/__WORKER_ROLE__/$WORKER_ROLE/g" \
        "$IAM_DIR/$1"
}

# ensure_role ROLE PROFILE POLICY...: the role (trusted by EC2) exists, has
# no managed policy and no inline policy but infoprompt-search-POLICY for
# each POLICY, whose documents are (re)written from cluster/iam/; the
# instance profile PROFILE exists and holds exactly this role.
ensure_role() {
    local role="$1" profile="$2"; shift 2
    local expected=" " name attached inline roles
    for name in "$@"; do expected+="infoprompt-search-$name "; done

    if ! aws iam get-role --role-name "$role" >/dev/null 2>&1; then
        aws iam create-role --role-name "$role" \
            --assume-role-policy-document "$(cat "$IAM_DIR/trust-policy.json")" >/dev/null
        echo "created role $role"
    fi
    attached=$(aws iam list-attached-role-policies --role-name "$role" \
            --query 'AttachedPolicies[].PolicyArn' --output text)
    [[ -z "$attached" || "$attached" == "None" ]] \
        || die "role $role has managed policies attached ($attached); detach them (aws iam detach-role-policy --role-name $role --policy-arn ARN)"
    inline=$(aws iam list-role-policies --role-name "$role" --query 'PolicyNames' --output text)
    for name in $inline; do
        [[ "$name" == "None" || "$expected" == *" $name "* ]] \
            || die "role $role has an unexpected inline policy $name; remove it (aws iam delete-role-policy --role-name $role --policy-name $name)"
    done
    for name in "$@"; do
        aws iam put-role-policy --role-name "$role" --policy-name "infoprompt-search-$name" \
            --policy-document "$(render "$name-policy.json")" >/dev/null
    done

    if ! aws iam get-instance-profile --instance-profile-name "$profile" >/dev/null 2>&1; then
        aws iam create-instance-profile --instance-profile-name "$profile" >/dev/null
        echo "created instance profile $profile"
    fi
    roles=$(aws iam get-instance-profile --instance-profile-name "$profile" \
            --query 'InstanceProfile.Roles[].RoleName' --output text)
    if [[ -z "$roles" || "$roles" == "None" ]]; then
        aws iam add-role-to-instance-profile --instance-profile-name "$profile" --role-name "$role" >/dev/null
    elif [[ "$roles" != "$role" ]]; then
        die "instance profile $profile holds role(s) $roles instead of $role"
    fi
    echo "role $role (instance profile $profile): inline policies${expected% }"
}

ensure_role "$WORKER_ROLE" "$WORKER_PROFILE" "${WORKER_POLICIES[@]}"
ensure_role "$HEAD_ROLE" "$HEAD_PROFILE" "${HEAD_POLICIES[@]}"

if aws iam get-instance-profile --instance-profile-name ray-autoscaler-v1 >/dev/null 2>&1; then
    echo "note: instance profile ray-autoscaler-v1 (Ray's default: full EC2 and S3 access) exists;" \
         "gpu.yaml no longer uses it. Delete it if nothing else in this account does."
fi
aws s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1 \
    || echo "warning: bucket $BUCKET not found or not yours; create it: aws s3 mb s3://$BUCKET --region $REGION"

cat <<EOF

Done. Put the security group into cluster/gpu.yaml (all three node types):

    sed -i.bak 's/$PLACEHOLDER/$SG/' cluster/gpu.yaml

check that provider.region in cluster/gpu.yaml is $REGION, and give the search
--storage-path s3://$BUCKET/... (the nodes may use no other bucket). A new
instance profile takes a few seconds to become usable: if \`ray up\` reports
an invalid IamInstanceProfile, wait a minute and run it again.
EOF
