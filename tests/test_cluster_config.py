"""Checks for the `ray up` configs in cluster/ (no network, no cloud calls).

Each config goes through Ray's own preparation and schema validation
(`prepare_config` merges the provider's defaults.yaml and fills per-type
min/max workers; `validate_config` checks ray-schema.json and the node-type
invariants) and through this project's security and consistency checks.

`check_cluster_config` returns a list of problems (empty = good); the negative
tests feed it mutated copies of the real config and expect it to complain.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema  # what Ray's validate_config uses
import pytest
import ray  # hard dependencies: a missing one must fail, not skip
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
PYPROJECT = ROOT / "pyproject.toml"

WORLD_CIDRS = ("0.0.0.0/0", "::/0")
IMAGE_RE = re.compile(r"rayproject/[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+")
GPU_INSTANCE_RE = re.compile(r"^(g\d|p\d|g\dd|p\dd|gr\d)", re.IGNORECASE)


# ----------------------------------------------------------------------------- helpers


def pinned_ray_version(pyproject_text: str) -> str:
    """The X in `ray[...]==X` (or `ray==X`) from pyproject's dependencies."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # Python 3.10: the quoted requirement strings suffice
        deps = re.findall(r'"(ray(?:\[[^\]]*\])?\s*==[^"]*)"', pyproject_text)
    else:
        deps = tomllib.loads(pyproject_text)["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"\s*ray(\[[^\]]*\])?\s*==\s*([0-9][0-9A-Za-z.]*)\s*", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"no exact ray pin (ray[...]==X) in {deps}")


def is_ray_up_config(cfg: object) -> bool:
    return (
        isinstance(cfg, dict)
        and isinstance(cfg.get("provider"), dict)
        and "type" in cfg["provider"]
        and ("available_node_types" in cfg or "cluster_name" in cfg)
    )


def ray_up_configs() -> list[Path]:
    paths = []
    for path in sorted(CLUSTER_DIR.glob("*.y*ml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        if len(docs) == 1 and is_ray_up_config(docs[0]):
            paths.append(path)
    return paths


def ray_prepare_and_validate(cfg: dict) -> dict:
    """Ray's own config preparation + schema validation; raises on bad config.

    Only the cloud-free part of `ray up`: provider bootstrap (key pairs,
    subnets, IAM, security groups) talks to AWS and is not run here.
    """
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def _all_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_strings(k)
            yield from _all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_strings(v)


def _images(cfg: dict, text: str) -> list[str]:
    found = set(IMAGE_RE.findall(text))
    docker = cfg.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if docker.get(key):
            found.add(docker[key])
    for node_type in (cfg.get("available_node_types") or {}).values():
        image = (node_type.get("docker") or {}).get("worker_image")
        if image:
            found.add(image)
    return sorted(found)


def _ray_start_commands(cfg: dict) -> list[tuple[str, str]]:
    out = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in cfg.get(key) or []:
            if re.search(r"\bray start\b", cmd):
                out.append((key, cmd))
    return out


def _docker_env(cfg: dict) -> dict[str, str]:
    """Environment set by `docker run` options (-e/--env K=V)."""
    docker = cfg.get("docker") or {}
    opts = list(docker.get("run_options") or [])
    env = {}
    tokens = [t for opt in opts for t in shlex.split(opt)]
    for i, tok in enumerate(tokens):
        value = None
        if tok in ("-e", "--env") and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif tok.startswith("--env="):
            value = tok[len("--env=") :]
        if value and "=" in value:
            k, v = value.split("=", 1)
            env[k] = v
    return env


def _flag_value(cmd: str, flag: str) -> str | None:
    m = re.search(rf"{re.escape(flag)}(?:=|\s+)(\S+)", cmd)
    return m.group(1) if m else None


def _is_gpu_type(node_type: dict) -> bool:
    resources = node_type.get("resources") or {}
    if float(resources.get("GPU", 0) or 0) > 0:
        return True
    instance = (node_type.get("node_config") or {}).get("InstanceType", "")
    return bool(GPU_INSTANCE_RE.match(instance))


# ----------------------------------------------------------------------------- the check


def check_cluster_config(text: str, ray_version: str) -> list[str]:
    """All problems found in one `ray up` config (YAML text). Empty = good."""
    problems: list[str] = []
    cfg = yaml.safe_load(text)
    if not is_ray_up_config(cfg):
        return ["not a `ray up` config (no provider / node types)"]

    # Ray's own preparation and schema validation.
    try:
        ray_prepare_and_validate(cfg)
    except (jsonschema.ValidationError, ValueError, RuntimeError, AssertionError, KeyError) as e:
        problems.append(f"Ray rejects the config: {type(e).__name__}: {str(e)[:300]}")

    # Nothing open to the world, anywhere in the file (comments included).
    for cidr in WORLD_CIDRS:
        if cidr in text:
            problems.append(f"world-open CIDR {cidr} in the file")

    # Security groups: Ray creates its own group (with SSH open to the world)
    # for every node type that names none.
    provider = cfg.get("provider") or {}
    node_types = cfg.get("available_node_types") or {}
    if provider.get("type") == "aws":
        for name, nt in node_types.items():
            if not (nt.get("node_config") or {}).get("SecurityGroupIds"):
                problems.append(
                    f"node type {name} has no SecurityGroupIds: Ray would create a "
                    "security group with SSH open to the world"
                )

    # Images: no ray-ml, Ray version everywhere = pinned = installed.
    images = _images(cfg, text)
    if not images:
        problems.append("no rayproject/ray docker image")
    for image in images:
        repo, _, tag = image.partition(":")
        if repo != "rayproject/ray":
            problems.append(
                f"image {image}: only rayproject/ray is allowed (ray-ml is deprecated)"
            )
            continue
        if tag != ray_version and not tag.startswith(ray_version + "-"):
            problems.append(f"image {image} does not carry Ray {ray_version}")

    # Head: no trials there, dashboard not on all interfaces.
    head_type = cfg.get("head_node_type")
    head_cmds = [c for k, c in _ray_start_commands(cfg) if k == "head_start_ray_commands"]
    if not head_cmds or not all("--head" in c for c in head_cmds):
        problems.append("no `ray start --head` in head_start_ray_commands")
    for cmd in head_cmds:
        if _flag_value(cmd, "--num-cpus") != "0":
            problems.append("head `ray start` lacks --num-cpus=0 (trials could run on the head)")
        host = _flag_value(cmd, "--dashboard-host")
        if host in ("0.0.0.0", "::", "[::]"):
            problems.append(f"dashboard bound to all interfaces ({host})")
    head_res = (node_types.get(head_type) or {}).get("resources") or {}
    if "CPU" in head_res and head_res["CPU"] != 0:
        problems.append(f"head node type declares CPU {head_res['CPU']}, not 0")

    # Autoscaling.
    idle = cfg.get("idle_timeout_minutes")
    if not isinstance(idle, (int, float)) or idle <= 0:
        problems.append("idle_timeout_minutes not set to a positive number")
    gpu_types = [n for n, nt in node_types.items() if n != head_type and _is_gpu_type(nt)]
    if not gpu_types:
        problems.append("no GPU worker type")
    for name in gpu_types:
        if node_types[name].get("min_workers", 0) != 0:
            problems.append(f"GPU worker type {name} has min_workers != 0")

    # Token authentication on every `ray start`, and the token on every node.
    docker_env = _docker_env(cfg)
    for key, cmd in _ray_start_commands(cfg):
        inline = re.search(r"\bRAY_AUTH_MODE=token\b", cmd)
        if not inline and docker_env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token")
    if not _ray_start_commands(cfg):
        problems.append("no `ray start` commands")
    mounts = cfg.get("file_mounts") or {}
    token_sources = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    has_token = any(
        str(remote).rstrip("/").endswith(".ray/auth_token") for remote in mounts
    ) or any(k in docker_env for k in token_sources)
    if not has_token:
        problems.append("no auth token on the nodes (file_mounts .../.ray/auth_token)")

    # The project and its install.
    if mounts.get("/home/ray/infoprompt-search") not in (".", "./"):
        problems.append('file_mounts lacks "/home/ray/infoprompt-search": "." (repo root)')
    setup = " ".join(
        str(c)
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in cfg.get(key) or []
    )
    if "pip install" not in setup or "/home/ray/infoprompt-search" not in setup:
        problems.append("setup commands do not pip-install /home/ray/infoprompt-search")
    if "constraints/cpu.txt" in setup:
        problems.append("setup commands use the CPU-only torch constraint")
    return problems


# ----------------------------------------------------------------------------- tests

CONFIGS = ray_up_configs()


def _gpu_yaml() -> str:
    return (CLUSTER_DIR / "gpu.yaml").read_text()


@pytest.fixture(scope="module")
def ray_version() -> str:
    return pinned_ray_version(PYPROJECT.read_text())


def test_gpu_yaml_is_discovered():
    assert CLUSTER_DIR / "gpu.yaml" in CONFIGS


def test_pinned_ray_version_is_installed(ray_version):
    assert ray.__version__ == ray_version


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_accepts_config(path):
    prepared = ray_prepare_and_validate(yaml.safe_load(path.read_text()))
    head = prepared["head_node_type"]
    assert prepared["available_node_types"][head]["max_workers"] == 0
    assert "cluster_synced_files" in prepared


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_checks(path, ray_version):
    assert check_cluster_config(path.read_text(), ray_version) == []


def test_gpu_yaml_shape():
    cfg = yaml.safe_load(_gpu_yaml())
    types = cfg["available_node_types"]
    instances = {nt["node_config"]["InstanceType"] for nt in types.values()}
    assert {"g5.xlarge", "g5.12xlarge"} <= instances
    assert types["gpu.4x.g5.12xlarge"]["resources"]["GPU"] == 4
    assert types["gpu.1x.g5.xlarge"]["resources"]["GPU"] == 1
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # Workers write checkpoints to S3: they need an instance profile.
    for name, nt in types.items():
        if name != cfg["head_node_type"]:
            assert nt["node_config"].get("IamInstanceProfile"), name
    # One security group for all node types (intra-cluster rule is group-to-self).
    groups = {tuple(nt["node_config"]["SecurityGroupIds"]) for nt in types.values()}
    assert len(groups) == 1


def test_ray_would_open_ssh_to_world_when_it_creates_the_group():
    """Why every node type names its security group: Ray's AWS provider adds an
    SSH rule from 0.0.0.0/0 to any group it creates. Read from the installed
    Ray's source (importing it needs boto3, which the tests do not)."""
    src_path = Path(ray.__file__).parent / "autoscaler/_private/aws/config.py"
    tree = ast.parse(src_path.read_text())
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "_create_default_ssh_inbound_rules"
    )
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    rules = ast.literal_eval(ret.value)
    cidrs = [r["CidrIp"] for rule in rules for r in rule.get("IpRanges", [])]
    assert "0.0.0.0/0" in cidrs
    # ...and it only skips creating groups for node types with SecurityGroupIds.
    assert '"SecurityGroupIds" not in node_type["node_config"]' in src_path.read_text()


def test_prereqs_script_matches_config():
    script = (CLUSTER_DIR / "aws_prereqs.sh").read_text()
    cfg = yaml.safe_load(_gpu_yaml())
    placeholder = re.search(r'PLACEHOLDER="([^"]+)"', script).group(1)
    for nt in cfg["available_node_types"].values():
        assert nt["node_config"]["SecurityGroupIds"] == [placeholder]
    head_profile = script_setting(script, "HEAD_PROFILE")
    worker_profile = script_setting(script, "WORKER_PROFILE")
    for name, nt in cfg["available_node_types"].items():
        want = head_profile if name == cfg["head_node_type"] else worker_profile
        assert nt["node_config"]["IamInstanceProfile"] == {"Name": want}, name
    region = re.search(r'REGION="\$\{3:-([^}]+)\}"', script).group(1)
    assert cfg["provider"]["region"] == region


# ----------------------------------------------------------------------------- negative tests


def _mutate_dict(fn):
    def apply(text: str) -> str:
        cfg = yaml.safe_load(text)
        fn(cfg)
        return yaml.safe_dump(cfg, sort_keys=False)

    return apply


def _open_ssh_to_world(cfg):
    cfg["provider"]["security_group"] = {
        "GroupName": "x",
        "IpPermissions": [
            {
                "FromPort": 22,
                "ToPort": 22,
                "IpProtocol": "tcp",
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    }


def _open_ipv6(cfg):
    cfg["provider"]["security_group"] = {
        "GroupName": "x",
        "IpPermissions": [
            {
                "FromPort": 8265,
                "ToPort": 8265,
                "IpProtocol": "tcp",
                "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
            }
        ],
    }


def _drop_security_group(cfg):
    for nt in cfg["available_node_types"].values():
        nt["node_config"].pop("SecurityGroupIds")


def _ray_ml(cfg):
    cfg["docker"]["image"] = f"rayproject/ray-ml:{ray.__version__}-py311-gpu"


def _wrong_version(cfg):
    cfg["docker"]["worker_image"] = "rayproject/ray:2.9.3-py311-gpu"


def _unpinned(cfg):
    cfg["docker"]["image"] = "rayproject/ray:latest-gpu"


def _head_runs_trials(cfg):
    cfg["head_start_ray_commands"] = [
        c.replace("--num-cpus=0", "") for c in cfg["head_start_ray_commands"]
    ]


def _public_dashboard(cfg):
    cfg["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        for c in cfg["head_start_ray_commands"]
    ]


def _no_idle_timeout(cfg):
    del cfg["idle_timeout_minutes"]


def _gpu_always_on(cfg):
    cfg["available_node_types"]["gpu.1x.g5.xlarge"]["min_workers"] = 1


def _no_auth(cfg):
    cfg["docker"]["run_options"] = [
        o for o in cfg["docker"]["run_options"] if "RAY_AUTH_MODE" not in o
    ]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cfg[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in cfg[key]]


def _no_token_file(cfg):
    cfg["file_mounts"] = {
        k: v for k, v in cfg["file_mounts"].items() if not k.endswith("auth_token")
    }


def _cpu_constraint(cfg):
    cfg["setup_commands"][0] += " -c /home/ray/infoprompt-search/constraints/cpu.txt"


def _schema_violation(cfg):
    cfg["max_wokers"] = 4  # typo: Ray's schema forbids unknown top-level keys


def _negative_max_workers(cfg):
    cfg["max_workers"] = -1  # schema minimum is 0


MUTATIONS = {
    "ssh-open-to-world": (_mutate_dict(_open_ssh_to_world), "world-open CIDR 0.0.0.0/0"),
    "ipv6-open-to-world": (_mutate_dict(_open_ipv6), "world-open CIDR ::/0"),
    "world-cidr-in-raw-text": (
        lambda t: t + "\n# CidrIp: 0.0.0.0/0\n",
        "world-open CIDR 0.0.0.0/0",
    ),
    "ray-creates-security-group": (_mutate_dict(_drop_security_group), "SecurityGroupIds"),
    "ray-ml-image": (_mutate_dict(_ray_ml), "ray-ml"),
    "ray-ml-image-raw-text": (
        lambda t: t.replace("rayproject/ray:", "rayproject/ray-ml:"),
        "ray-ml",
    ),
    "wrong-ray-version": (_mutate_dict(_wrong_version), "does not carry Ray"),
    "unpinned-image": (_mutate_dict(_unpinned), "does not carry Ray"),
    "head-runs-trials": (_mutate_dict(_head_runs_trials), "--num-cpus=0"),
    "public-dashboard": (_mutate_dict(_public_dashboard), "all interfaces"),
    "no-idle-timeout": (_mutate_dict(_no_idle_timeout), "idle_timeout_minutes"),
    "gpu-min-workers": (_mutate_dict(_gpu_always_on), "min_workers != 0"),
    "no-token-auth": (_mutate_dict(_no_auth), "RAY_AUTH_MODE=token"),
    "no-token-file": (_mutate_dict(_no_token_file), "auth token"),
    "cpu-torch-constraint": (_mutate_dict(_cpu_constraint), "CPU-only"),
    "schema-violation": (_mutate_dict(_schema_violation), "Ray rejects"),
    "negative-max-workers": (_mutate_dict(_negative_max_workers), "Ray rejects"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_checks_catch_bad_config(name, ray_version):
    mutate, expected = MUTATIONS[name]
    good = _gpu_yaml()
    assert check_cluster_config(good, ray_version) == []
    problems = check_cluster_config(mutate(good), ray_version)
    assert problems, f"{name}: mutated config passed every check"
    assert any(expected in p for p in problems), problems


def test_checks_catch_version_mismatch_with_pyproject(ray_version):
    """A pyproject pin that differs from the config's image is caught too."""
    assert pinned_ray_version('[project]\ndependencies = ["ray[tune]==9.9.9"]\n') == "9.9.9"
    problems = check_cluster_config(_gpu_yaml(), "9.9.9")
    assert any("does not carry Ray 9.9.9" in p for p in problems)


def test_ray_validate_config_rejects_bad_schema():
    cfg = yaml.safe_load(_gpu_yaml())
    cfg["available_node_types"]["gpu.1x.g5.xlarge"]["bogus_key"] = 1
    with pytest.raises(jsonschema.ValidationError, match="bogus_key"):
        ray_prepare_and_validate(cfg)


# ----------------------------------------------------------------------------- IAM
#
# cluster/aws_prereqs.sh creates one role + instance profile for the head and one for
# the workers, and puts inline policies on them rendered from cluster/iam/NAME-policy.json
# (HEAD_POLICIES / WORKER_POLICIES in the script name the files). `check_iam` reads the
# script's settings, the policy files and gpu.yaml statically; the fake-AWS tests run the
# script against a stand-in `aws` and check what it would send to AWS.

IAM_DIR = CLUSTER_DIR / "iam"
PREREQS = CLUSTER_DIR / "aws_prereqs.sh"

# Placeholders as they appear in cluster/iam/*.json (the script fills them in).
BUCKET_ARN = "arn:aws:s3:::__BUCKET__"
OBJECTS_ARN = BUCKET_ARN + "/*"
WORKER_ROLE_ARN = "arn:aws:iam::__ACCOUNT__:role/__WORKER_ROLE__"
# All a node may do in S3: list the results bucket (s3:ListBucket also answers the
# HeadBucket call pyarrow makes to find the bucket's region) and read, write and delete
# the objects in it, multipart uploads included.
S3_BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation"}
S3_OBJECT_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}
S3_REQUIRED = {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
# The EC2 calls Ray's AWS node provider makes on the head (ray/autoscaler/_private/aws/
# node_provider.py): list the cluster's nodes, launch, tag and terminate them; describe
# instance types (resource fill-out) and images (the CloudWatch AMI check).
DLAMI_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/"
                   "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id")
DLAMI_PARAMETERS_ARN = "arn:aws:ssm:__REGION__::parameter/aws/service/deeplearning/ami/x86_64/*"
HEAD_EC2_ACTIONS = {
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeImages",
    "ec2:RunInstances",
    "ec2:CreateTags",
    "ec2:TerminateInstances",
}
HEAD_EC2_REQUIRED = {
    "ec2:DescribeInstances",
    "ec2:RunInstances",
    "ec2:CreateTags",
    "ec2:TerminateInstances",
}
# Needed only with provider.cache_stopped_nodes (Ray's AWS default is True): stop idle
# nodes instead of terminating them, start them again later.
EC2_CACHE_ACTIONS = {"ec2:StartInstances", "ec2:StopInstances"}
# Actions on existing instances: only on this cluster's nodes (Ray tags each node it
# launches with ray-cluster-name = cluster_name).
EC2_CLUSTER_SCOPED = {
    "ec2:CreateTags",
    "ec2:TerminateInstances",
    "ec2:StartInstances",
    "ec2:StopInstances",
}
CLUSTER_TAG = "ec2:ResourceTag/ray-cluster-name"


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def script_setting(script: str, name: str) -> str | None:
    """VALUE of a top-level `NAME="VALUE"` line in a bash script."""
    m = re.search(rf'^{name}="([^"]*)"', script, re.MULTILINE)
    return m.group(1) if m else None


def script_array(script: str, name: str) -> list[str] | None:
    """Words of a top-level `NAME=(a b c)` line in a bash script."""
    m = re.search(rf"^{name}=\(([^)]*)\)", script, re.MULTILINE)
    return m.group(1).split() if m else None


def iam_policies() -> dict[str, dict]:
    """cluster/iam/NAME-policy.json as {NAME: document}."""
    return {
        p.name.removesuffix("-policy.json"): json.loads(p.read_text())
        for p in sorted(IAM_DIR.glob("*-policy.json"))
    }


def _scoped_to_cluster(statement: dict, action: str, cluster_name: str | None) -> bool:
    equals = (statement.get("Condition") or {}).get("StringEquals") or {}
    if action == "ec2:CreateTags" and _as_list(equals.get("ec2:CreateAction")) == [
        "RunInstances"
    ]:
        return True  # tags set while launching, nothing else
    return bool(cluster_name) and _as_list(equals.get(CLUSTER_TAG)) == [cluster_name]


def _run_instances_problems(where: str, statement: dict, cfg: dict) -> list[str]:
    """ec2:RunInstances: on instance/* only the worker types gpu.yaml launches, tagged with
    its cluster_name at launch (Ray's TagSpecifications); never on every resource."""
    resources = _as_list(statement.get("Resource", []))
    if "*" in resources:
        return [f"{where}: ec2:RunInstances on every resource; limit instance/* to the worker "
                "types of gpu.yaml and its cluster tag"]
    if not any(r.endswith(":instance/*") for r in resources):
        return []  # what a launch uses besides the instance: images, subnets, volumes, ...
    equals = (statement.get("Condition") or {}).get("StringEquals") or {}
    head = cfg.get("head_node_type")
    workers = {(t.get("node_config") or {}).get("InstanceType")
               for name, t in (cfg.get("available_node_types") or {}).items() if name != head}
    problems = []
    if set(_as_list(equals.get("ec2:InstanceType", []))) != workers:
        problems.append(f"{where}: ec2:RunInstances instance types "
                        f"{sorted(_as_list(equals.get('ec2:InstanceType', [])))}, not the "
                        f"worker types of gpu.yaml {sorted(workers)}")
    if _as_list(equals.get("aws:RequestTag/ray-cluster-name")) != [cfg.get("cluster_name")]:
        problems.append(f"{where}: ec2:RunInstances of instances not tagged "
                        f"ray-cluster-name={cfg.get('cluster_name')} (gpu.yaml cluster_name)")
    return problems


def _check_role_policies(role: str, docs: dict[str, dict], cfg: dict) -> list[str]:
    """Problems in the inline policies of the `head` or `worker` role."""
    problems = []
    cache_stopped = bool((cfg.get("provider") or {}).get("cache_stopped_nodes", True))
    allowed_ec2 = set()
    required = set(S3_REQUIRED)
    if role == "head":
        allowed_ec2 = HEAD_EC2_ACTIONS | (EC2_CACHE_ACTIONS if cache_stopped else set())
        required |= HEAD_EC2_REQUIRED | {"iam:PassRole"}
        required |= EC2_CACHE_ACTIONS if cache_stopped else set()
    granted = set()
    for name, doc in docs.items():
        where = f"{role} role, iam/{name}-policy.json"
        for st in _as_list(doc.get("Statement", [])):
            if st.get("Effect") != "Allow":
                continue
            if "NotAction" in st or "NotResource" in st:
                problems.append(f"{where}: NotAction/NotResource allows all that is not listed")
                continue
            actions = _as_list(st.get("Action", []))
            resources = _as_list(st.get("Resource", []))
            granted.update(actions)
            for action in actions:
                service = action.split(":")[0]
                if "*" in action:
                    problems.append(f"{where}: wildcard action {action}")
                elif service == "s3":
                    ok = (
                        S3_BUCKET_ACTIONS
                        if resources == [BUCKET_ARN]
                        else S3_OBJECT_ACTIONS
                        if resources == [OBJECTS_ARN]
                        else set()
                    )
                    if action not in ok:
                        problems.append(
                            f"{where}: {action} on {resources}; only the results bucket "
                            f"({sorted(S3_BUCKET_ACTIONS)} on {BUCKET_ARN}, "
                            f"{sorted(S3_OBJECT_ACTIONS)} on {OBJECTS_ARN})"
                        )
                elif service == "ec2" and role == "worker":
                    problems.append(f"{where}: {action} (workers run trial code: no EC2 rights)")
                elif action == "ec2:RunInstances" and role == "head":
                    problems += _run_instances_problems(where, st, cfg)
                elif service == "ec2":
                    if action not in allowed_ec2:
                        problems.append(f"{where}: {action} is not a call of Ray's autoscaler")
                    elif action in EC2_CLUSTER_SCOPED and not _scoped_to_cluster(
                        st, action, cfg.get("cluster_name")
                    ):
                        problems.append(
                            f"{where}: {action} not limited to instances tagged "
                            f"ray-cluster-name={cfg.get('cluster_name')} (gpu.yaml cluster_name)"
                        )
                elif action == "iam:PassRole" and role == "head":
                    if resources != [WORKER_ROLE_ARN]:
                        problems.append(
                            f"{where}: iam:PassRole on {resources}, not only the worker role "
                            f"{WORKER_ROLE_ARN}"
                        )
                elif action == "ssm:GetParameters" and role == "head":
                    if resources != [DLAMI_PARAMETERS_ARN]:
                        problems.append(f"{where}: ssm:GetParameters on {resources}, not only "
                                        f"the public DLAMI parameters {DLAMI_PARAMETERS_ARN}")
                else:
                    problems.append(f"{where}: {action} (not needed by the {role})")
    if role == "head" and any(str(nt["node_config"].get("ImageId", "")).startswith("resolve:ssm:")
                              for nt in (cfg.get("available_node_types") or {}).values()):
        required.add("ssm:GetParameters")  # EC2 reads the parameter as the launching role
    for action in sorted(required - granted):
        why = " (provider.cache_stopped_nodes is on)" if action in EC2_CACHE_ACTIONS else ""
        problems.append(f"{role} role lacks {action}{why}")
    return problems


def check_iam(script: str, policies: dict[str, dict], cfg_text: str) -> list[str]:
    """All IAM problems in aws_prereqs.sh + cluster/iam/*.json + gpu.yaml. Empty = good."""
    problems: list[str] = []
    cfg = yaml.safe_load(cfg_text)

    # No managed policies: neither Ray's default *FullAccess ones nor any other.
    texts = {"aws_prereqs.sh": script, "gpu.yaml": cfg_text}
    texts.update({f"iam/{n}-policy.json": json.dumps(d) for n, d in policies.items()})
    for where, text in texts.items():
        if "FullAccess" in text:
            problems.append(f"{where}: names a *FullAccess managed policy")
    if re.search(r"\battach-role-policy\b", script) or "arn:aws:iam::aws:policy/" in script:
        problems.append("aws_prereqs.sh attaches a managed policy (only cluster/iam/ inline ones)")

    head_profile = script_setting(script, "HEAD_PROFILE")
    worker_profile = script_setting(script, "WORKER_PROFILE")
    head_names = script_array(script, "HEAD_POLICIES")
    worker_names = script_array(script, "WORKER_POLICIES")
    if not (head_profile and worker_profile) or head_names is None or worker_names is None:
        problems.append(
            "aws_prereqs.sh lacks HEAD_PROFILE, WORKER_PROFILE, HEAD_POLICIES or WORKER_POLICIES"
        )
        return problems
    if head_profile == worker_profile:
        problems.append(f"head and workers share the instance profile {head_profile}")

    # gpu.yaml: the head node type has the head's profile, every other type the workers'.
    head_type = cfg.get("head_node_type")
    for name, nt in (cfg.get("available_node_types") or {}).items():
        want = {"Name": head_profile if name == head_type else worker_profile}
        got = (nt.get("node_config") or {}).get("IamInstanceProfile")
        if got != want:
            hint = ""
            if name == head_type and got is None:
                hint = " (without one, `ray up` makes ray-autoscaler-v1: full EC2 and S3 access)"
            problems.append(f"node type {name}: IamInstanceProfile {got}, expected {want}{hint}")

    # The policies each role gets.
    for name in sorted(set(head_names + worker_names) - set(policies)):
        problems.append(
            f"aws_prereqs.sh puts policy {name}, but cluster/iam/{name}-policy.json is missing"
        )
    for role, names in (("worker", worker_names), ("head", head_names)):
        docs = {n: policies[n] for n in names if n in policies}
        problems += _check_role_policies(role, docs, cfg)

    # Every placeholder in the policy files is one the script fills in.
    filled = set(re.findall(r"s/(__[A-Z_]+__)/", script))
    for name, doc in policies.items():
        for placeholder in sorted(set(re.findall(r"__[A-Z_]+__", json.dumps(doc))) - filled):
            problems.append(
                f"iam/{name}-policy.json: placeholder {placeholder} is never filled in"
            )
    return problems


def _iam_setup() -> dict:
    return {"script": PREREQS.read_text(), "policies": iam_policies(), "cfg_text": _gpu_yaml()}


def test_iam_passes_checks():
    assert check_iam(**_iam_setup()) == []


def test_iam_roles_and_policy_files():
    setup = _iam_setup()
    assert set(setup["policies"]) == {"trust", "bucket", "autoscaler"}
    assert script_array(setup["script"], "WORKER_POLICIES") == ["bucket"]
    assert script_array(setup["script"], "HEAD_POLICIES") == ["bucket", "autoscaler"]
    trust = setup["policies"]["trust"]["Statement"]
    assert [(s["Principal"], s["Action"]) for s in trust] == [
        ({"Service": "ec2.amazonaws.com"}, "sts:AssumeRole")
    ]


def test_ray_creates_full_access_profile_unless_head_names_one():
    """Why the head's node_config names a profile: otherwise `ray up` gives the head
    ray-autoscaler-v1 with Ray's default AmazonEC2FullAccess + AmazonS3FullAccess.
    Read from the installed Ray's source (importing it needs boto3)."""
    src = (Path(ray.__file__).parent / "autoscaler/_private/aws/config.py").read_text()
    fn = next(
        n
        for n in ast.parse(src).body
        if isinstance(n, ast.FunctionDef) and n.name == "_configure_iam_role"
    )
    body = ast.get_source_segment(src, fn)
    first = ast.get_source_segment(src, next(n for n in fn.body if isinstance(n, ast.If)))
    assert '"IamInstanceProfile" in head_node_config' in first and "return config" in first
    assert "AmazonEC2FullAccess" in body and "AmazonS3FullAccess" in body


# --- mutated copies prove each IAM check fires


def _edit_cfg(fn):
    def apply(setup):
        cfg = yaml.safe_load(setup["cfg_text"])
        fn(cfg)
        setup["cfg_text"] = yaml.safe_dump(cfg, sort_keys=False)

    return apply


def _edit_statement(policy, sid, fn):
    def apply(setup):
        statement = next(s for s in setup["policies"][policy]["Statement"] if s.get("Sid") == sid)
        fn(statement)

    return apply


def _add_statement(policy, statement):
    def apply(setup):
        setup["policies"][policy]["Statement"].append(statement)

    return apply


def _edit_script(old, new):
    def apply(setup):
        assert old in setup["script"]
        setup["script"] = setup["script"].replace(old, new)

    return apply


def _append_script(line):
    def apply(setup):
        setup["script"] += "\n" + line + "\n"

    return apply


def _profile(cfg, node_type, name):
    cfg["available_node_types"][node_type]["node_config"]["IamInstanceProfile"] = {"Name": name}


WORKER_OBJECTS = "ReadWriteObjectsInTheResultsBucket"
PASS_ROLE = "StartWorkersWithTheWorkerRoleOnly"
TERMINATE = "RetagAndTerminateThisClustersNodesOnly"
LAUNCH = "LaunchOnlyTheWorkerTypesOfGpuYamlTaggedForThisCluster"

IAM_MUTATIONS = {
    "worker-gets-head-profile": (
        _edit_cfg(lambda c: _profile(c, "gpu.1x.g5.xlarge", "infoprompt-search-ray-head")),
        "gpu.1x.g5.xlarge: IamInstanceProfile",
    ),
    "worker-profile-typo": (
        _edit_cfg(lambda c: _profile(c, "gpu.4x.g5.12xlarge", "infoprompt-search-worker")),
        "gpu.4x.g5.12xlarge: IamInstanceProfile",
    ),
    "head-without-profile": (
        _edit_cfg(
            lambda c: c["available_node_types"]["ray.head.default"]["node_config"].pop(
                "IamInstanceProfile"
            )
        ),
        "ray-autoscaler-v1",
    ),
    "one-profile-for-both": (
        _edit_script(
            'WORKER_PROFILE="infoprompt-search-ray-worker"',
            'WORKER_PROFILE="infoprompt-search-ray-head"',
        ),
        "share the instance profile",
    ),
    "full-access-put-back": (
        _append_script(
            'aws iam attach-role-policy --role-name "$HEAD_ROLE" '
            "--policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess"
        ),
        "FullAccess",
    ),
    "managed-policy-attached": (
        _append_script(
            'aws iam attach-role-policy --role-name "$WORKER_ROLE" '
            "--policy-arn arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
        ),
        "attaches a managed policy",
    ),
    "ec2-action-for-workers": (
        _add_statement(
            "bucket", {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}
        ),
        "workers run trial code: no EC2 rights",
    ),
    "autoscaler-policy-on-workers": (
        _edit_script("WORKER_POLICIES=(bucket)", "WORKER_POLICIES=(bucket autoscaler)"),
        "workers run trial code: no EC2 rights",
    ),
    "pass-role-for-workers": (
        _add_statement(
            "bucket", {"Effect": "Allow", "Action": "iam:PassRole", "Resource": WORKER_ROLE_ARN}
        ),
        "iam:PassRole (not needed by the worker)",
    ),
    "s3-wildcard": (
        _edit_statement("bucket", WORKER_OBJECTS, lambda s: s.update(Action="s3:*")),
        "wildcard action s3:*",
    ),
    "any-bucket": (
        _edit_statement("bucket", WORKER_OBJECTS, lambda s: s.update(Resource="arn:aws:s3:::*")),
        "only the results bucket",
    ),
    "not-action": (
        _edit_statement(
            "bucket",
            WORKER_OBJECTS,
            lambda s: s.update(NotAction=s.pop("Action"), Resource="*"),
        ),
        "NotAction",
    ),
    "pass-any-role": (
        _edit_statement("autoscaler", PASS_ROLE, lambda s: s.update(Resource="*")),
        "not only the worker role",
    ),
    "pass-head-role": (
        _edit_statement(
            "autoscaler",
            PASS_ROLE,
            lambda s: s.update(
                Resource="arn:aws:iam::__ACCOUNT__:role/infoprompt-search-ray-head"
            ),
        ),
        "not only the worker role",
    ),
    "ec2-wildcard-for-head": (
        _edit_statement("autoscaler", "FindNodes", lambda s: s.update(Action="ec2:Describe*")),
        "wildcard action ec2:Describe*",
    ),
    "ec2-action-autoscaler-does-not-use": (
        _add_statement(
            "autoscaler",
            {"Effect": "Allow", "Action": "ec2:ModifyInstanceAttribute", "Resource": "*"},
        ),
        "ec2:ModifyInstanceAttribute is not a call of Ray's autoscaler",
    ),
    "terminate-any-instance": (
        _edit_statement("autoscaler", TERMINATE, lambda s: s.pop("Condition")),
        "not limited to instances tagged",
    ),
    "cluster-renamed": (
        _edit_cfg(lambda c: c.update(cluster_name="renamed")),
        "not limited to instances tagged ray-cluster-name=renamed",
    ),
    "cache-stopped-nodes": (
        _edit_cfg(lambda c: c["provider"].update(cache_stopped_nodes=True)),
        "head role lacks ec2:StartInstances",
    ),
    "head-cannot-launch": (
        lambda setup: [_edit_statement("autoscaler", sid, lambda s: s.update(Action=[]))(setup)
                       for sid in (LAUNCH, "WhatALaunchUses")],
        "head role lacks ec2:RunInstances",
    ),
    "launch-on-any-resource": (
        _edit_statement("autoscaler", LAUNCH, lambda s: s.update(Resource="*")),
        "ec2:RunInstances on every resource",
    ),
    "launch-any-instance-type": (
        _edit_statement("autoscaler", LAUNCH,
                        lambda s: s["Condition"]["StringEquals"].pop("ec2:InstanceType")),
        "ec2:RunInstances instance types [], not the worker types of gpu.yaml",
    ),
    "launch-a-type-gpu-yaml-does-not-use": (
        _edit_statement("autoscaler", LAUNCH, lambda s: s["Condition"]["StringEquals"]
                        ["ec2:InstanceType"].append("p4d.24xlarge")),
        "not the worker types of gpu.yaml ['g5.12xlarge', 'g5.xlarge']",
    ),
    "launch-untagged": (
        _edit_statement("autoscaler", LAUNCH, lambda s: s["Condition"]["StringEquals"]
                        .pop("aws:RequestTag/ray-cluster-name")),
        "ec2:RunInstances of instances not tagged ray-cluster-name=infoprompt-search",
    ),
    "workers-cannot-write": (
        _edit_statement(
            "bucket", WORKER_OBJECTS, lambda s: s["Action"].remove("s3:PutObject")
        ),
        "worker role lacks s3:PutObject",
    ),
    "policy-file-missing": (
        _edit_script(
            "HEAD_POLICIES=(bucket autoscaler)", "HEAD_POLICIES=(bucket autoscaler logs)"
        ),
        "iam/logs-policy.json is missing",
    ),
    "placeholder-never-filled": (
        _edit_statement(
            "bucket", WORKER_OBJECTS, lambda s: s.update(Resource="arn:aws:s3:::__BUKET__/*")
        ),
        "placeholder __BUKET__",
    ),
}


@pytest.mark.parametrize("name", sorted(IAM_MUTATIONS))
def test_iam_checks_catch_bad_setup(name):
    mutate, expected = IAM_MUTATIONS[name]
    setup = _iam_setup()
    assert check_iam(**setup) == []
    setup = copy.deepcopy(setup)
    mutate(setup)
    problems = check_iam(**setup)
    assert problems, f"{name}: mutated IAM setup passed every check"
    assert any(expected in p for p in problems), problems


# --- aws_prereqs.sh run against a fake `aws` (no network, no AWS account)

# Answers the calls aws_prereqs.sh makes, from a JSON state file, like the AWS CLI v2
# with `--output text`; logs every call; fails (exit 2) on any call it does not know,
# e.g. attach-role-policy.
FAKE_AWS = r'''
import json, os, sys

path = os.environ["FAKE_AWS_STATE"]
state = {"sg": None, "cidrs": [], "roles": {}, "profiles": {}}
if os.path.exists(path):
    with open(path) as f:
        state = json.load(f)
args = sys.argv[1:]
with open(os.environ["FAKE_AWS_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
call, opts, key = tuple(args[:2]), {}, None
for a in args[2:]:
    if a.startswith("--"):
        key = a
        opts[key] = []
    else:
        opts[key].append(a)

def arg(k):
    return opts[k][0]

def fail(code):
    print(f"An error occurred ({code}) when calling {args[1]}", file=sys.stderr)
    sys.exit(254)

out = ""
if call == ("sts", "get-caller-identity"):
    out = "123456789012"
elif call == ("ec2", "describe-vpcs"):
    out = "vpc-0fake"
elif call == ("ec2", "describe-security-groups"):
    out = "\t".join(state["cidrs"]) if "--group-ids" in opts else (state["sg"] or "None")
elif call == ("ec2", "create-security-group"):
    state["sg"] = out = "sg-0fake"
elif call == ("ec2", "authorize-security-group-ingress"):
    perm = arg("--ip-permissions")
    if "CidrIp=" in perm:
        cidr = perm.split("CidrIp=")[1].split(",")[0]
        if cidr in state["cidrs"]:
            fail("InvalidPermission.Duplicate")
        state["cidrs"].append(cidr)
elif call == ("s3api", "head-bucket"):
    pass
elif call == ("iam", "get-role"):
    if arg("--role-name") not in state["roles"]:
        fail("NoSuchEntity")
elif call == ("iam", "create-role"):
    state["roles"][arg("--role-name")] = {
        "trust": json.loads(arg("--assume-role-policy-document")), "inline": {}, "attached": []}
elif call == ("iam", "list-attached-role-policies"):
    out = "\t".join(state["roles"][arg("--role-name")]["attached"])
elif call == ("iam", "list-role-policies"):
    out = "\t".join(state["roles"][arg("--role-name")]["inline"])
elif call == ("iam", "put-role-policy"):
    state["roles"][arg("--role-name")]["inline"][arg("--policy-name")] = json.loads(
        arg("--policy-document"))
elif call == ("iam", "get-instance-profile"):
    if arg("--instance-profile-name") not in state["profiles"]:
        fail("NoSuchEntity")
    out = "\t".join(state["profiles"][arg("--instance-profile-name")])
elif call == ("iam", "create-instance-profile"):
    state["profiles"][arg("--instance-profile-name")] = []
elif call == ("iam", "add-role-to-instance-profile"):
    state["profiles"][arg("--instance-profile-name")].append(arg("--role-name"))
else:
    print(f"fake aws: unexpected call {args}", file=sys.stderr)
    sys.exit(2)
with open(path, "w") as f:
    json.dump(state, f)
if out:
    print(out)
'''


class FakeAws:
    def __init__(self, tmp_path: Path):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        aws = bin_dir / "aws"
        aws.write_text(f"#!{sys.executable}\n{FAKE_AWS}")
        aws.chmod(0o755)
        self.state_path = tmp_path / "aws-state.json"
        self.log_path = tmp_path / "aws-calls.jsonl"
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_AWS_STATE": str(self.state_path),
            "FAKE_AWS_LOG": str(self.log_path),
        }

    def run(self, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        """Run aws_prereqs.sh ARGS; return the process and the `aws` calls it made."""
        self.log_path.unlink(missing_ok=True)
        proc = subprocess.run(
            ["bash", str(PREREQS), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = []
        if self.log_path.exists():
            calls = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return proc, calls

    @property
    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    @state.setter
    def state(self, value: dict) -> None:
        self.state_path.write_text(json.dumps(value))


def _statements_of(docs: dict) -> list[dict]:
    return [st for doc in docs.values() for st in _as_list(doc["Statement"])]


def test_prereqs_script_with_fake_aws(tmp_path):
    fake = FakeAws(tmp_path)
    script = PREREQS.read_text()
    head_profile = script_setting(script, "HEAD_PROFILE")
    worker_profile = script_setting(script, "WORKER_PROFILE")

    proc, calls = fake.run("198.51.100.7/32", "my-results.bucket", "eu-west-1")
    assert proc.returncode == 0, proc.stderr
    state = fake.state
    assert state["cidrs"] == ["198.51.100.7/32"]

    # One role per instance profile, a different one for head and workers.
    (worker_role,) = state["profiles"][worker_profile]
    (head_role,) = state["profiles"][head_profile]
    assert worker_role != head_role
    assert set(state["roles"]) == {worker_role, head_role}
    for role in state["roles"].values():
        assert role["trust"] == json.loads((IAM_DIR / "trust-policy.json").read_text())
        assert role["attached"] == []
    assert not [c for c in calls if c[1] == "attach-role-policy"]
    rendered = json.dumps(state["roles"])
    assert "__" not in rendered and "FullAccess" not in rendered

    # Workers: the bucket, nothing else.
    worker = _statements_of(state["roles"][worker_role]["inline"])
    assert {a.split(":")[0] for st in worker for a in _as_list(st["Action"])} == {"s3"}
    assert {r for st in worker for r in _as_list(st["Resource"])} == {
        "arn:aws:s3:::my-results.bucket",
        "arn:aws:s3:::my-results.bucket/*",
    }
    # Head: the same bucket policy, plus the autoscaler's, which passes the worker role only.
    head_docs = state["roles"][head_role]["inline"]
    assert set(head_docs) == {"infoprompt-search-bucket", "infoprompt-search-autoscaler"}
    assert head_docs["infoprompt-search-bucket"] == state["roles"][worker_role]["inline"][
        "infoprompt-search-bucket"
    ]
    head = _statements_of(head_docs)
    passes = [st for st in head if "iam:PassRole" in _as_list(st["Action"])]
    assert [st["Resource"] for st in passes] == [f"arn:aws:iam::123456789012:role/{worker_role}"]
    assert {a for st in head for a in _as_list(st["Action"]) if a.startswith("iam:")} == {
        "iam:PassRole"
    }
    assert "arn:aws:ec2:eu-west-1:123456789012:instance/*" in rendered

    # Idempotent: a second run creates nothing and leaves the same state.
    proc, calls = fake.run("198.51.100.7/32", "my-results.bucket", "eu-west-1")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c[1].startswith(("create-", "add-"))], calls
    assert fake.state == state
    assert "already exists" in proc.stdout

    # Another bucket: the policies are rewritten for it, the old bucket is gone.
    proc, _ = fake.run("198.51.100.7/32", "other-bucket", "eu-west-1")
    assert proc.returncode == 0, proc.stderr
    rendered = json.dumps(fake.state["roles"])
    assert "arn:aws:s3:::other-bucket/*" in rendered and "my-results.bucket" not in rendered


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            {"attached": ["arn:aws:iam::aws:policy/AmazonS3FullAccess"]},
            "managed policies attached",
        ),
        ({"inline": {"leftover": {}}}, "unexpected inline policy leftover"),
    ],
    ids=["managed-policy", "extra-inline-policy"],
)
def test_prereqs_script_refuses_extra_rights_on_its_roles(tmp_path, extra, expected):
    fake = FakeAws(tmp_path)
    proc, _ = fake.run("198.51.100.7/32", "my-results-bucket")
    assert proc.returncode == 0, proc.stderr
    state = fake.state
    worker_role = state["profiles"][script_setting(PREREQS.read_text(), "WORKER_PROFILE")][0]
    for key, value in extra.items():
        if isinstance(value, list):
            state["roles"][worker_role][key] += value
        else:
            state["roles"][worker_role][key].update(value)
    fake.state = state
    proc, _ = fake.run("198.51.100.7/32", "my-results-bucket")
    assert proc.returncode == 1
    assert expected in proc.stderr


@pytest.mark.parametrize(
    "bucket",
    [
        "s3://my-bucket",
        "My-Bucket",
        "my_bucket",
        "ab",
        "a" * 64,
        "-my-bucket",
        "my-bucket.",
        "my..bucket",
        "192.168.1.10",
        "us-west-2",  # the old argument order: CIDR REGION
    ],
)
def test_prereqs_script_rejects_bad_bucket_name(tmp_path, bucket):
    proc, calls = FakeAws(tmp_path).run("198.51.100.7/32", bucket)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an S3 bucket name" in lines[0], proc.stderr
    assert calls == []  # refused before any AWS call


@pytest.mark.parametrize(
    "args, expected",
    [
        (["198.51.100.7/32"], "usage:"),
        (["198.51.100.7/32", "my-bucket", "west"], "is not an AWS region"),
        (["0.0.0.0/0", "my-bucket"], "refusing /0"),
    ],
    ids=["no-bucket", "bad-region", "world-cidr"],
)
def test_prereqs_script_rejects_bad_arguments(tmp_path, args, expected):
    proc, calls = FakeAws(tmp_path).run(*args)
    assert proc.returncode == 1
    assert expected in proc.stderr
    assert calls == []


# ----------------------------------------------------------------------------- GPU drivers


def test_every_node_runs_the_current_deep_learning_ami_and_gpu_workers_need_cuda(monkeypatch):
    """Ray's default AMI (Deep Learning AMI, Ubuntu 18.04) has a driver too old for the CUDA
    builds pip installs torch from: every node names the current Base OSS Nvidia Driver GPU
    DLAMI, and a GPU worker whose torch sees no GPU fails its setup instead of training on
    its CPU."""
    import torch

    cfg = yaml.safe_load(_gpu_yaml())
    for name, node_type in cfg["available_node_types"].items():
        assert node_type["node_config"]["ImageId"] == f"resolve:ssm:{DLAMI_PARAMETER}", name
    check = next(c for c in cfg["worker_setup_commands"] if "torch.cuda" in c)
    argv = shlex.split(check)
    assert argv[:2] == ["python", "-c"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        exec(compile(argv[2], "worker_setup", "exec"), {})
    assert "sees no GPU here" in str(stopped.value.code)  # a message: non-zero exit, printed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit) as passed:
        exec(compile(argv[2], "worker_setup", "exec"), {})
    assert passed.value.code == 0
