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
import re
import shlex
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
    profile = re.search(r'PROFILE="([^"]+)"', script).group(1)
    for name, nt in cfg["available_node_types"].items():
        if "IamInstanceProfile" in nt["node_config"]:
            assert nt["node_config"]["IamInstanceProfile"] == {"Name": profile}, name
    region = re.search(r'REGION="\$\{2:-([^}]+)\}"', script).group(1)
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
