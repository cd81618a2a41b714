"""infra/: the image, the compose stack and the Helm values agree with the code.

No Docker daemon or Kubernetes cluster is needed: the files are parsed and every name, port,
image and setting they share with the code or with each other is checked against its source
(`tasks.settings.Settings`, Prefect's settings, pyproject.toml, constraints.txt, the CLIs, the
flows, deployments/prefect.yaml). infra/bootstrap.py runs for real against a moto S3 server and
a `rustac serve` of the tiny synthetic archive.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from dask.utils import parse_bytes

from tasks.settings import Settings
from tasks.synthetic import ArchiveInfo

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
GPU_COMPOSE_FILE = INFRA / "docker-compose.gpu.yml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HELM = INFRA / "helm"
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"

#: The contract of the operations work (issue 6): the process work pool every worker serves and
#: the global concurrency limit that guards GPU work.
WORK_POOL = "eo-process"
GPU_LIMIT = "gpu"
#: runAsUser of Prefect's Helm charts (prefect-server / prefect-worker values.yaml): our image's
#: user must have it, or the pods run as a UID without a home directory.
CHART_UID = 1001
#: Variables that must never be written inline (compose `environment`, Helm `value:`).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|API_KEY", re.IGNORECASE)
#: YAML keys whose value would be a credential itself (not the name of a Secret holding one).
SECRET_KEY = re.compile(r"(password|passwd|token|api_?key|access_?key|auth_?string)$", re.I)


# ---- loading -------------------------------------------------------------------------------------
@cache
def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(COMPOSE_FILE)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _helm(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _yaml(HELM / name)
    return data


def _unescape(value: str) -> str:
    """A compose value as the container sees it: ``$$`` is compose's escape for ``$``."""
    return value.replace("$$", "$")


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        out[key.strip()] = value.strip()
    return out


def _env_files(service: dict[str, Any]) -> list[Path]:
    files = service.get("env_file", [])
    files = [files] if isinstance(files, str | dict) else files
    return [COMPOSE_FILE.parent / (f["path"] if isinstance(f, dict) else f) for f in files]


def _inline_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _unescape(str(v)) for k, v in env.items()}


def _env(service: dict[str, Any]) -> dict[str, str]:
    """The environment of a service's container: its env files, then `environment` over them."""
    out: dict[str, str] = {}
    for path in _env_files(service):
        out.update(_env_file(path))
    out.update(_inline_env(service))
    return out


def _args(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _option(args: list[str], name: str) -> str | None:
    """The value of `name` in an argument list (``--name value`` or ``--name=value``)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _port(address: str) -> int:
    """Port of ``:8787``, ``0.0.0.0:7822`` or ``host:9000``."""
    return int(address.rsplit(":", 1)[1])


def _services_running(*words: str) -> list[str]:
    """Compose services whose command starts with `words`."""
    return [
        name
        for name, svc in _services().items()
        if _args(svc.get("command"))[: len(words)] == list(words)
    ]


def _the_service_running(*words: str) -> str:
    found = _services_running(*words)
    assert len(found) == 1, f"expected one service running {' '.join(words)!r}, found {found}"
    return found[0]


def _our_services() -> dict[str, dict[str, Any]]:
    """Services built from infra/Dockerfile."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = _args(service["healthcheck"]["test"])
    urls = [a for a in test if a.startswith(("http://", "https://"))]
    assert len(urls) == 1, f"healthcheck {test} should GET one URL"
    return urls[0]


def _image(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def _pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


def _pin(package: str) -> str:
    found = re.search(
        rf"^{re.escape(package)}==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE
    )
    assert found, f"constraints.txt pins no {package} version"
    return found.group(1)


@cache
def _eo_variables() -> frozenset[str]:
    """Environment names of `Settings`, derived from its fields and its env prefix."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return frozenset((prefix + name).upper() for name in Settings.model_fields)


@cache
def _prefect_variables() -> frozenset[str]:
    # Prefect's own list of valid setting names (and their aliases), at the pinned version.
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return frozenset(_get_valid_setting_names(PrefectSettings))


def _validated_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`Settings` read from `env` alone, as a container with that environment reads it."""
    for key in _eo_variables():
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key.startswith("EO_"):
            monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# ---- Dockerfile ----------------------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of infra/Dockerfile; continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        line, buffer = buffer + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text
    )


def _args_of_stage(stage: list[tuple[str, str]], outer: dict[str, str]) -> dict[str, str]:
    """Build arguments visible in `stage`: its ARG defaults over the global ones (`outer`)."""
    values = dict(outer)
    for keyword, rest in stage:
        if keyword == "ARG":
            name, sep, default = rest.partition("=")
            if sep:
                values[name] = default
    return values


def _global_args() -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, rest in _dockerfile():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            values[name] = default
    return values


def _final_stage() -> list[tuple[str, str]]:
    return _stages()[-1]


def _last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for kw, rest in stage if kw == keyword]
    assert values, f"the final stage has no {keyword}"
    return values[-1]


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY instructions that read the build context."""
    out = []
    for keyword, rest in stage:
        if keyword not in ("COPY", "ADD"):
            continue
        parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _docker_regex(pattern: str) -> re.Pattern[str]:
    # .dockerignore semantics (Docker's patternmatcher: Go filepath.Match plus `**`), which no
    # Python library implements: patterns are relative to the context root, `*` and `?` stop
    # at `/`, `**` spans directories.
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(relative: str) -> bool:
    """True when the build context leaves `relative` (or a folder above it) out."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for raw in _dockerignore_patterns():
        negate = raw.startswith("!")
        regex = _docker_regex(raw[1:] if negate else raw)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    assert _docker_regex("**/__pycache__").fullmatch("tasks/synthetic/__pycache__")
    assert _docker_regex("*.egg-info").fullmatch("eo_pipeline.egg-info")
    assert not _docker_regex("*.egg-info").fullmatch("sub/eo_pipeline.egg-info")
    assert not _docker_regex("tests").fullmatch("tasks/tests")
    assert _docker_regex(".venv-*").fullmatch(".venv-arosics")


# ---- every file parses ---------------------------------------------------------------------------
def test_every_yaml_file_of_infra_parses() -> None:
    files = sorted([*INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml")])
    names = {f.relative_to(INFRA).as_posix() for f in files}
    assert {
        "docker-compose.yml",
        "docker-compose.gpu.yml",
        "helm/prefect-server.values.yaml",
        "helm/prefect-worker.values.yaml",
        "helm/prefect-worker-kubernetes.values.yaml",
        "helm/dask.values.yaml",
        "helm/eo-cache-pvc.yaml",
    } <= names
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), f"{path.name} is not a mapping"


# ---- the image -----------------------------------------------------------------------------------
def test_dockerfile_copies_only_files_that_exist_in_the_build_context() -> None:
    copies = [src for stage in _stages() for sources, _ in _copies(stage) for src in sources]
    assert copies, "the Dockerfile copies nothing from the build context"
    for source in copies:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _dockerignored(source), f"COPY {source}: .dockerignore excludes it"


def test_build_context_keeps_what_the_package_needs_and_drops_credentials() -> None:
    project = _pyproject()
    needed = [project["project"]["readme"], "pyproject.toml", "constraints.txt"]
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed += [p.relative_to(REPO).as_posix() for p in REPO.glob(package.rstrip("*"))]
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        for pattern in globs:
            needed += [p.relative_to(REPO).as_posix() for p in (REPO / package).glob(pattern)]
    assert len(needed) > 5
    for path in needed:
        assert not _dockerignored(path), f".dockerignore drops {path}, which the build needs"
    env_files = {p for svc in _services().values() for p in _env_files(svc)}
    assert env_files, "the compose services read no env file"
    for path in env_files:
        assert path.is_file(), f"env file {path.name} is missing"
        relative = path.relative_to(REPO).as_posix()
        assert _dockerignored(relative), f"{relative} (credentials) would be copied into images"
    for path in (".venv", ".git", ".eo-cache"):
        assert _dockerignored(path), f"{path} would be sent to the Docker daemon"


def test_dockerfile_installs_the_project_under_the_constraints_with_cpu_torch() -> None:
    runs = [rest for stage in _stages() for kw, rest in stage if kw == "RUN"]
    installs = [r for r in runs if "pip install" in r and " -c constraints.txt" in r]
    assert any(re.search(r"-c constraints\.txt \.(\s|$)", r) for r in installs), (
        "no `pip install -c constraints.txt .` of the project"
    )
    build_args = _args_of_stage(_stages()[0], _global_args())
    assert build_args.get("TORCH_INDEX_URL", "").endswith("/whl/cpu"), (
        "the default build must take torch from PyTorch's CPU index"
    )
    assert all("TORCH_INDEX_URL" in r for r in installs), "an install ignores TORCH_INDEX_URL"
    assert _pin("torch"), "constraints.txt must pin torch (its CPU wheel version)"


def test_dockerfile_python_is_the_projects() -> None:
    base = _substitute(_stages()[-1][0][1].split()[0], _global_args())
    found = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", base)
    assert found, f"base image {base!r}: expected python:X.Y-slim"
    lowest = re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert lowest and found.groups()[:2] == lowest.groups(), (
        f"{base} is not the Python of requires-python"
    )
    assert _pyproject()["tool"]["mypy"]["python_version"] == ".".join(found.groups()[:2])


def test_image_runs_as_the_charts_non_root_user() -> None:
    stage = _final_stage()
    values = _args_of_stage(stage, _global_args())
    user = _substitute(_last(stage, "USER"), values).split(":")[0]
    assert user.isdigit(), f"USER {user!r}: numeric, so Kubernetes can check runAsNonRoot"
    assert int(user) == CHART_UID != 0
    dask = _helm("dask.values.yaml")
    for role in ("scheduler", "worker"):
        assert dask[role]["securityContext"]["runAsUser"] == int(user)


def test_image_default_command_is_a_worker_of_the_work_pool() -> None:
    stage = _final_stage()
    entrypoint = json.loads(_last(stage, "ENTRYPOINT"))
    cmd = json.loads(_last(stage, "CMD"))
    assert Path(entrypoint[0]).name == "tini"
    installs = " ".join(rest for kw, rest in stage if kw == "RUN" and "apt-get install" in rest)
    assert " tini" in installs, "ENTRYPOINT runs tini, which the image does not install"
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert _option(cmd, "--pool") == WORK_POOL
    assert _option(cmd, "--type") == "process"


def test_image_provides_the_commands_of_the_dask_chart() -> None:
    # The dask/dask chart starts `dask-scheduler` and `worker.image.dask_worker`.
    runs = " ".join(rest for kw, rest in _final_stage() if kw == "RUN")
    dask = _helm("dask.values.yaml")
    for command, subcommand in (
        ("dask-scheduler", "scheduler"),
        (dask["worker"]["image"]["dask_worker"], "worker"),
    ):
        assert f"/usr/local/bin/{command}" in runs, f"the image has no `{command}`"
        assert f"exec dask {subcommand}" in runs


def test_image_code_directory_is_the_deployments_working_directory() -> None:
    workdir = _last(_final_stage(), "WORKDIR")
    copied = {
        src: _in_workdir(dest, workdir)
        for sources, dest in _copies(_final_stage())
        for src in sources
    }
    for package in ("flows", "tasks", "models", "deployments"):
        assert copied.get(package) == f"{workdir}/{package}", f"{package}/ is not in {workdir}"
    if not PREFECT_YAML.exists():
        pytest.skip("deployments/prefect.yaml is not written yet")
    pulls = re.findall(
        r"set_working_directory:\s*\n\s*directory:\s*(\S+)", PREFECT_YAML.read_text()
    )
    for directory in pulls:
        assert directory.strip("\"'") == workdir, (
            f"deployments/prefect.yaml runs flows in {directory}, the image has them in {workdir}"
        )


def _in_workdir(dest: str, workdir: str) -> str:
    """Absolute path of a COPY destination (relative ones are under WORKDIR)."""
    return os.path.normpath(dest if dest.startswith("/") else f"{workdir}/{dest}")


# ---- compose: images, settings, wiring -----------------------------------------------------------
def test_compose_services_of_ours_share_one_image_built_from_infra() -> None:
    ours = _our_services()
    assert {"prefect-server", "worker", "dask-scheduler", "dask-worker"} <= set(ours)
    images = {svc["image"] for svc in ours.values()}
    assert len(images) == 1, f"our services run different images: {images}"
    repository, tag = _image(images.pop())
    assert tag == _pyproject()["project"]["version"], "tag the image with the project version"
    for svc in ours.values():
        context = (COMPOSE_FILE.parent / svc["build"]["context"]).resolve()
        assert context == REPO
        assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    for name in ("postgres", "minio"):
        assert _services()[name]["image"].rsplit(":", 1)[-1] not in ("", "latest"), name
    assert repository == "eo-pipeline"


def test_compose_eo_variables_are_settings_fields_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = set()
    for name, svc in _services().items():
        env = _env(svc)
        unknown = {k for k in env if k.startswith("EO_")} - _eo_variables()
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of tasks.settings.Settings"
        seen |= {k for k in env if k.startswith("EO_")}
        _validated_settings(env, monkeypatch)  # raises on a value Settings rejects
    assert {"EO_OUTPUT_URL", "EO_S3_ENDPOINT_URL", "EO_DASK_ADDRESS", "EO_STAC_API_URL"} <= seen
    # The flow (worker) and the tasks it sends to Dask must see the same settings.
    worker = {k: v for k, v in _env(_services()["worker"]).items() if k.startswith("EO_")}
    dask = {k: v for k, v in _env(_services()["dask-worker"]).items() if k.startswith("EO_")}
    assert worker == dask
    settings = _validated_settings(_env(_services()["worker"]), monkeypatch)
    assert settings.output_url.startswith("s3://")


def test_compose_prefect_variables_are_prefect_settings() -> None:
    for name, svc in _services().items():
        unknown = {k for k in _env(svc) if k.startswith("PREFECT_")} - _prefect_variables()
        assert not unknown, f"{name}: {sorted(unknown)} are not Prefect {_pin('prefect')} settings"


def test_compose_prefect_api_url_points_at_the_server() -> None:
    server = _the_service_running("prefect", "server", "start")
    args = _args(_services()[server]["command"])
    port = int(_option(args, "--port") or 0)
    assert _option(args, "--host") == "0.0.0.0", "the server must listen beyond its container"
    clients = [n for n, s in _services().items() if "PREFECT_API_URL" in _env(s)]
    assert {"worker", "dask-worker", "prefect-init"} <= set(clients)
    for name in clients:
        url = urlsplit(_env(_services()[name])["PREFECT_API_URL"])
        assert (url.hostname, url.port, url.path) == (server, port, "/api"), name
    published = {
        int(str(p).split(":")[-1]): int(str(p).split(":")[0]) for p in _services()[server]["ports"]
    }
    ui = urlsplit(_env(_services()[server])["PREFECT_UI_API_URL"])
    assert ui.hostname == "localhost" and ui.port == published[port] and ui.path == "/api"
    health = urlsplit(_healthcheck_url(_services()[server]))
    assert (health.port, health.path) == (port, "/api/health")


def test_compose_dask_address_points_at_the_scheduler() -> None:
    scheduler = _the_service_running("dask", "scheduler")
    args = _args(_services()[scheduler]["command"])
    port = int(_option(args, "--port") or 0)
    expected = f"tcp://{scheduler}:{port}"
    for name in ("worker", "dask-worker"):
        assert _env(_services()[name])["EO_DASK_ADDRESS"] == expected, name
    worker_args = _args(_services()["dask-worker"]["command"])
    assert worker_args[:2] == ["dask", "worker"] and worker_args[2] == expected
    assert urlsplit(_healthcheck_url(_services()[scheduler])).port == _port(
        _option(args, "--dashboard-address") or ""
    )
    assert int(_services()["dask-worker"].get("deploy", {}).get("replicas", 1)) >= 2


def _entrypoint_dirs() -> set[str]:
    """Folders of the flow files that deployments name (``flows/products.py:monitor``)."""
    text = PREFECT_YAML.read_text() if PREFECT_YAML.exists() else (INFRA / "README.md").read_text()
    return {str(Path(file).parent) for file, _ in re.findall(r"\b([\w/]+\.py):(\w+)", text)}


def test_dask_processes_can_import_flows_loaded_by_file(tmp_path: Path) -> None:
    # Prefect loads `flows/products.py:monitor` as the top-level module `products` (by file
    # stem), and the task graphs the flow sends to Dask refer to it by that name: the scheduler
    # and the workers unpickle them, so those folders must be on their PYTHONPATH.
    from prefect.utilities.importtools import load_script_as_module

    script = tmp_path / "eo_probe_flow.py"
    script.write_text("VALUE = 1\n")
    assert load_script_as_module(str(script)).__name__ == "eo_probe_flow"
    workdir = _last(_final_stage(), "WORKDIR")
    needed = {f"{workdir}/{folder}" for folder in _entrypoint_dirs()}
    assert needed
    dask = _helm("dask.values.yaml")
    paths = {
        "compose dask-scheduler": _env(_services()["dask-scheduler"]).get("PYTHONPATH", ""),
        "compose dask-worker": _env(_services()["dask-worker"]).get("PYTHONPATH", ""),
        "helm scheduler": _env_list(dask["scheduler"].get("env") or []).get("PYTHONPATH", ""),
        "helm worker": _env_list(dask["worker"].get("env") or []).get("PYTHONPATH", ""),
    }
    for where, path in paths.items():
        assert needed <= set(path.split(":")), f"{where}: PYTHONPATH={path!r} lacks {needed}"


def test_dask_workers_give_their_cores_to_one_task_thread() -> None:
    from dask.config import collect_env

    helm_worker = _helm("dask.values.yaml")["worker"]
    envs = {
        "compose": _env(_services()["dask-worker"]),
        "helm": _env_list(helm_worker["env"]),
    }
    threads = {
        "compose": _option(_args(_services()["dask-worker"]["command"]), "--nthreads"),
        "helm": str(helm_worker.get("threads_per_worker")),
    }
    for where, env in envs.items():
        assert threads[where] == "1", f"{where}: one task thread per worker (tasks use the cores)"
        nanny = collect_env({k: v for k, v in env.items() if k.startswith("DASK_")})["distributed"][
            "nanny"
        ]
        environ = next(v for k, v in nanny.items() if k.replace("_", "-") == "pre-spawn-environ")
        # Not `omp_num_threads`: the nanny would export that name, which OpenMP ignores.
        assert int(environ["OMP_NUM_THREADS"]) >= 1, f"{where}: {environ}"


def test_compose_dask_and_eo_commands_parse_with_their_clis() -> None:
    import typer
    from distributed.cli import dask_scheduler, dask_worker

    for name, module in (("dask-scheduler", dask_scheduler), ("dask-worker", dask_worker)):
        args = _args(_services()[name]["command"])[2:]
        module.main.make_context(name, list(args))  # raises a UsageError on a bad option
    # click takes --memory-limit as text; dask parses it when the worker starts.
    parse_bytes(_option(_args(_services()["dask-worker"]["command"]), "--memory-limit") or "")
    scripts = _pyproject()["project"]["scripts"]
    module_name, _, attr = scripts["eo"].partition(":")
    cli = typer.main.get_command(getattr(importlib.import_module(module_name), attr))
    checked = 0
    for name, svc in _services().items():
        args = _args(svc.get("command"))
        if not args or args[0] != "eo":
            continue
        command: Any = cli
        rest = args[1:]
        while hasattr(command, "commands"):  # a group: descend by subcommand name
            assert rest and rest[0] in command.commands, f"{name}: `{' '.join(args)}` unknown"
            command, rest = command.commands[rest[0]], rest[1:]
        command.make_context(name, list(rest))
        checked += 1
    assert checked, "no service runs the `eo` CLI"


def test_compose_s3_endpoint_points_at_minio() -> None:
    minio = [n for n, s in _services().items() if "minio/minio" in s.get("image", "")]
    assert len(minio) == 1
    port = _port(_option(_args(_services()[minio[0]]["command"]), "--address") or "")
    for name in ("worker", "dask-worker", "create-bucket"):
        env = _env(_services()[name])
        url = urlsplit(env["EO_S3_ENDPOINT_URL"])
        assert (url.scheme, url.hostname, url.port) == ("http", minio[0], port), name
        # GDAL's /vsis3/ reads its own variables (NOTES: S3 with moto server)
        assert env["AWS_S3_ENDPOINT"] == f"{minio[0]}:{port}" and env["AWS_HTTPS"] == "NO"
    bucket = _args(_services()["create-bucket"]["command"])
    assert bucket[-1] == "create-bucket"
    assert _services()["worker"]["depends_on"]["create-bucket"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_stac_url_points_at_the_stac_service_over_the_archive() -> None:
    stac = [n for n, s in _services().items() if "serve-stac" in _args(s.get("command"))]
    assert len(stac) == 1
    args = _args(_services()[stac[0]]["command"])
    public = urlsplit(_option(args, "--addr") or "")
    bind_port = _port(_option(args, "--bind") or "")
    assert (public.hostname, public.port) == (stac[0], bind_port)
    for name in ("worker", "dask-worker"):
        assert _env(_services()[name])["EO_STAC_API_URL"] == public.geturl()
    assert urlsplit(_healthcheck_url(_services()[stac[0]])).port == bind_port
    # The archive served is the one `eo archive create` writes, on the same volume; its Items'
    # hrefs are absolute paths, so every reader mounts that volume at the same place.
    archive = args[args.index("serve-stac") + 1]
    creator = [
        n
        for n, s in _services().items()
        if _args(s.get("command"))[:3] == ["eo", "archive", "create"]
    ]
    assert len(creator) == 1 and _args(_services()[creator[0]]["command"])[3] == archive

    def mount_of(service: str) -> tuple[str, str]:
        for volume in _services()[service]["volumes"]:
            source, target = str(volume).split(":")[:2]
            if archive.startswith(target.rstrip("/") + "/"):
                return source, target
        raise AssertionError(f"{service} does not mount {archive}")

    assert len({mount_of(s) for s in (creator[0], stac[0], "worker", "dask-worker")}) == 1


def test_compose_database_url_resolves_to_the_postgres_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect.settings import Settings as PrefectSettings
    from sqlalchemy.engine import make_url

    postgres = [n for n, s in _services().items() if s.get("image", "").startswith("postgres:")]
    assert len(postgres) == 1
    pg_env = _env(_services()[postgres[0]])
    server = _services()[_the_service_running("prefect", "server", "start")]
    raw = server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert pg_env["POSTGRES_PASSWORD"] not in raw, "the database password is written inline"
    for key in list(os.environ):
        if key.startswith(("PREFECT_SERVER_DATABASE", "PREFECT_API_DATABASE")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    for key, value in _env(server).items():
        if key.startswith("PREFECT_SERVER_DATABASE"):
            monkeypatch.setenv(key, value)
    resolved = PrefectSettings().server.database.connection_url
    assert resolved is not None
    url = make_url(resolved.get_secret_value())
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == postgres[0] and url.port == int(pg_env.get("PGPORT", 5432))
    assert url.username == pg_env["POSTGRES_USER"] and url.database == pg_env["POSTGRES_DB"]
    assert url.password == pg_env["POSTGRES_PASSWORD"], "server and database disagree on it"
    assert server["depends_on"][postgres[0]]["condition"] == "service_healthy"


def test_compose_worker_serves_the_work_pool_that_init_creates_with_the_gpu_limit() -> None:
    worker = _args(_services()["worker"]["command"])
    assert worker[:3] == ["prefect", "worker", "start"] and "--with-healthcheck" in worker
    assert _option(worker, "--pool") == WORK_POOL and _option(worker, "--type") == "process"
    health = urlsplit(_healthcheck_url(_services()["worker"]))
    assert health.port == int(_env(_services()["worker"])["PREFECT_WORKER_WEBSERVER_PORT"])
    assert health.path == "/health"
    init = " ".join(_args(_services()["prefect-init"]["command"]))
    assert re.search(rf"work-pool create {WORK_POOL} --type process\b", init)
    created = set(re.findall(r"global-concurrency-limit create (\S+) --limit [1-9]", init))
    assert GPU_LIMIT in created
    # Every limit the code takes must exist, or `concurrency(name)` does not limit anything.
    # The names: string literals passed to concurrency(), and *CONCURRENCY_LIMIT* constants.
    used, calls = set(), 0
    for path in [*REPO.glob("flows/*.py"), *REPO.glob("tasks/**/*.py")]:
        text = path.read_text()
        calls += len(re.findall(r"\bconcurrency\(", text))
        used |= set(re.findall(r"\bconcurrency\(\s*[\"']([\w.-]+)[\"']", text))
        used |= set(re.findall(r"^\w*CONCURRENCY_LIMIT\w*\s*=\s*[\"']([\w.-]+)[\"']", text, re.M))
    assert used or not calls, "the code takes concurrency limits whose names this test cannot see"
    assert used <= created, f"the code takes limits {sorted(used - created)} nobody creates"
    for needed in ("prefect-init", "create-bucket"):
        assert _services()["worker"]["depends_on"][needed]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_dependencies_have_what_their_conditions_wait_for() -> None:
    services = _services()
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            elif spec["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not a one-shot"
        if svc.get("restart") == "unless-stopped" and name != "dask-worker":
            assert "healthcheck" in svc, f"long-running {name} has no healthcheck"


def test_compose_credentials_come_only_from_env_files() -> None:
    for name, svc in _services().items():
        inline = {k for k in _inline_env(svc) if SECRET_NAME.search(k)}
        assert not inline, f"{name} writes {sorted(inline)} inline: use an env file"
    text = COMPOSE_FILE.read_text() + GPU_COMPOSE_FILE.read_text()
    values = {
        v for svc in _services().values() for p in _env_files(svc) for v in _env_file(p).values()
    }
    for value in values:
        assert value not in text, "a credential of infra/env/ is copied into a compose file"
    s3 = _env_file(INFRA / "env" / "s3.env")
    assert s3["AWS_ACCESS_KEY_ID"] == s3["MINIO_ROOT_USER"]
    assert s3["AWS_SECRET_ACCESS_KEY"] == s3["MINIO_ROOT_PASSWORD"]
    assert len(s3["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8 characters"
    pg = _env_file(INFRA / "env" / "postgres.env")
    assert pg["POSTGRES_PASSWORD"] == pg["PREFECT_SERVER_DATABASE_PASSWORD"]


def test_compose_volumes_are_declared_and_the_cache_is_shared() -> None:
    declared = set(_compose()["volumes"])
    for name, svc in _services().items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"

    def cache_volume(service: str) -> str:
        cache_dir = _env(_services()[service])["EO_CACHE_DIR"]
        mounts = [str(v).split(":") for v in _services()[service]["volumes"]]
        found = [m[0] for m in mounts if m[1] == cache_dir]
        assert found, f"{service}: EO_CACHE_DIR={cache_dir} is not a volume"
        return found[0]

    assert cache_volume("worker") == cache_volume("dask-worker")


def test_compose_scripts_are_in_the_image() -> None:
    workdir = _last(_final_stage(), "WORKDIR")
    copies = [
        (src.rstrip("/"), _in_workdir(dest, workdir))
        for sources, dest in _copies(_final_stage())
        for src in sources
    ]
    scripts = 0
    for name, svc in _our_services().items():
        words = _args(svc.get("command")) + _args(svc.get("healthcheck", {}).get("test"))
        for script in [w for w in words if w.startswith("infra/")]:
            scripts += 1
            assert (REPO / script).is_file(), f"{name}: {script} does not exist"
            assert any(
                (script == src or script.startswith(src + "/")) and dest == f"{workdir}/{src}"
                for src, dest in copies
            ), f"{name} runs {script}, which the Dockerfile does not copy to {workdir}"
    assert scripts


def test_gpu_override_builds_the_cuda_variant_of_the_same_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    override: dict[str, Any] = _yaml(GPU_COMPOSE_FILE)
    base_repository, base_tag = _image(_services()["worker"]["image"])
    assert "TORCH_INDEX_URL" in _args_of_stage(_stages()[0], _global_args())
    for name, svc in override["services"].items():
        assert name in _services(), f"the override adds {name}, not in the base stack"
        repository, tag = _image(svc["image"])
        assert repository == base_repository and tag.startswith(base_tag) and tag != base_tag
        assert svc["build"]["args"]["TORCH_INDEX_URL"] == ""
        assert svc["build"]["dockerfile"] == _services()[name]["build"]["dockerfile"]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)
        assert _validated_settings(svc["environment"], monkeypatch).device == "cuda"


# ---- Helm ----------------------------------------------------------------------------------------
def _env_list(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in entries if "value" in e}


def _namespace() -> str:
    pvc: dict[str, Any] = _yaml(HELM / "eo-cache-pvc.yaml")
    return str(pvc["metadata"]["namespace"])


def test_helm_images_are_the_compose_image() -> None:
    repository, tag = _image(_services()["worker"]["image"])
    server = _helm("prefect-server.values.yaml")["global"]["prefect"]["image"]
    worker = _helm("prefect-worker.values.yaml")["worker"]["image"]
    dask = _helm("dask.values.yaml")
    for image in (server, worker):
        assert (image["repository"], str(image["prefectTag"])) == (repository, tag)
    for role in ("scheduler", "worker"):
        image = dask[role]["image"]
        assert (image["repository"], str(image["tag"])) == (repository, tag)
    assert dask["jupyter"]["enabled"] is False


def test_helm_worker_serves_the_work_pool_and_reaches_the_server() -> None:
    server = _helm("prefect-server.values.yaml")
    values = _helm("prefect-worker.values.yaml")["worker"]
    assert values["config"]["workPool"] == WORK_POOL and values["config"]["type"] == "process"
    assert values["apiConfig"] == "selfHostedServer"
    api = (
        f"http://{server['fullnameOverride']}.{_namespace()}.svc.cluster.local:"
        f"{server['service']['port']}{server['server'].get('apiBasePath', '/api')}"
    )
    assert values["selfHostedServerApiConfig"]["apiUrl"] == api
    assert server["service"]["targetPort"] == server["service"]["port"]
    dask_env = _env_list(_helm("dask.values.yaml")["worker"]["env"])
    assert dask_env["PREFECT_API_URL"] == api
    kubernetes = _helm("prefect-worker-kubernetes.values.yaml")["worker"]
    assert kubernetes["selfHostedServerApiConfig"]["apiUrl"] == api


def test_helm_dask_address_is_the_charts_scheduler_service() -> None:
    dask = _helm("dask.values.yaml")
    expected = (
        f"tcp://{dask['fullnameOverride']}-scheduler.{_namespace()}.svc.cluster.local:"
        f"{dask['scheduler']['servicePort']}"
    )
    worker_env = _env_list(_helm("prefect-worker.values.yaml")["worker"]["extraEnvVars"])
    assert worker_env["EO_DASK_ADDRESS"] == expected


def test_helm_dask_chart_commands_parse_with_the_images_dask() -> None:
    # The arguments the dask/dask chart's templates give the scheduler and each worker.
    from distributed.cli import dask_scheduler, dask_worker

    dask = _helm("dask.values.yaml")
    scheduler_port = dask["scheduler"]["servicePort"]
    dask_scheduler.main.make_context(
        "dask-scheduler", [f"--port={scheduler_port}", "--dashboard-address=:8787"]
    )
    limits = dask["worker"]["resources"]["limits"]
    parse_bytes(str(limits["memory"]))  # the chart passes it to --memory-limit
    dask_worker.main.make_context(
        "dask-worker",
        [
            f"{dask['fullnameOverride']}-scheduler:{scheduler_port}",
            "--nthreads",
            str(dask["worker"].get("threads_per_worker", limits["cpu"])),
            "--memory-limit",
            str(limits["memory"]),
            "--no-dashboard",
            "--dashboard-address",
            "8790",
        ],
    )
    assert dask["scheduler"]["readinessProbe"]["httpGet"]["port"] == 8787


def test_helm_eo_and_prefect_variables_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    envs = {
        "prefect-worker": _env_list(_helm("prefect-worker.values.yaml")["worker"]["extraEnvVars"]),
        "prefect-worker-kubernetes": _env_list(
            _helm("prefect-worker-kubernetes.values.yaml")["worker"]["extraEnvVars"]
        ),
        "dask worker": _env_list(_helm("dask.values.yaml")["worker"]["env"]),
        "prefect-server": _env_list(
            _helm("prefect-server.values.yaml")["global"]["prefect"]["env"]
        ),
    }
    for name, env in envs.items():
        unknown_eo = {k for k in env if k.startswith("EO_")} - _eo_variables()
        assert not unknown_eo, f"{name}: {sorted(unknown_eo)} are not Settings fields"
        unknown_prefect = {k for k in env if k.startswith("PREFECT_")} - _prefect_variables()
        assert not unknown_prefect, f"{name}: {sorted(unknown_prefect)} are not Prefect settings"
        _validated_settings(env, monkeypatch)
    worker = {k: v for k, v in envs["prefect-worker"].items() if k.startswith("EO_")}
    dask = {k: v for k, v in envs["dask worker"].items() if k.startswith("EO_")}
    assert {k: worker[k] for k in dask} == dask, "the flow and its Dask tasks see other settings"
    assert set(worker) - set(dask) <= {"EO_DASK_ADDRESS"}


def test_helm_kubernetes_worker_runs_the_pinned_prefect() -> None:
    values = _helm("prefect-worker-kubernetes.values.yaml")["worker"]
    tag = str(values["image"]["prefectTag"])
    python = _stages()[-1][0][1]
    python_version = re.search(r"python:(\d+\.\d+)", _substitute(python, _global_args()))
    assert python_version
    assert tag == f"{_pin('prefect')}-python{python_version.group(1)}-kubernetes"
    assert values["config"]["type"] == "kubernetes"
    assert values["config"]["workPool"] != WORK_POOL


def test_helm_server_reads_postgres_from_a_secret() -> None:
    values = _helm("prefect-server.values.yaml")
    assert values["sqlite"]["enabled"] is False, "SQLite locks under concurrent flow runs"
    assert values["postgresql"]["enabled"] is False
    assert values["secret"]["create"] is False and values["secret"]["name"]
    assert Path(values["server"]["command"][0]).name == "tini"


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    else:
        yield path, node


def test_helm_values_hold_no_credentials() -> None:
    for path in HELM.glob("*.yaml"):
        data = _yaml(path)
        for where, value in _walk(data):
            if SECRET_KEY.search(re.sub(r"\[\d+\]$", "", where.rsplit(".", 1)[-1])):
                assert value in (None, "", False), f"{path.name}{where} holds a credential"
        for node_path, node in _walk_env_entries(data):
            if SECRET_NAME.search(node["name"]):
                assert "value" not in node, f"{path.name}{node_path}: {node['name']} inline"


def _walk_env_entries(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield path, node
        for key, value in node.items():
            yield from _walk_env_entries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_env_entries(value, f"{path}[{i}]")


def test_helm_cache_volume_is_one_shared_claim_at_eo_cache_dir() -> None:
    pvc: dict[str, Any] = _yaml(HELM / "eo-cache-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    worker = _helm("prefect-worker.values.yaml")["worker"]
    dask = _helm("dask.values.yaml")["worker"]
    mounts = {
        "worker": (worker["extraVolumes"], worker["extraVolumeMounts"], worker["extraEnvVars"]),
        "dask": (dask["mounts"]["volumes"], dask["mounts"]["volumeMounts"], dask["env"]),
    }
    for role, (volumes, volume_mounts, env) in mounts.items():
        cache_dir = _env_list(env)["EO_CACHE_DIR"]
        mount = [m for m in volume_mounts if m["mountPath"] == cache_dir]
        assert mount, f"{role}: nothing mounted at EO_CACHE_DIR={cache_dir}"
        volume = [v for v in volumes if v["name"] == mount[0]["name"]]
        assert volume[0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], role


# ---- deployments/prefect.yaml and the flow entrypoints -------------------------------------------
def _served_pools() -> set[str]:
    served = {_option(_args(_services()["worker"]["command"]), "--pool")}
    for name in ("prefect-worker.values.yaml", "prefect-worker-kubernetes.values.yaml"):
        served.add(_helm(name)["worker"]["config"]["workPool"])
    return {p for p in served if p}


def test_deployments_use_served_pools_our_image_and_the_pinned_prefect() -> None:
    if not PREFECT_YAML.exists():
        pytest.skip("deployments/prefect.yaml is not written yet")
    project: dict[str, Any] = _yaml(PREFECT_YAML)
    used = {d["work_pool"]["name"] for d in project["deployments"] if d.get("work_pool")}
    assert WORK_POOL in used
    assert used <= _served_pools(), f"no worker in infra/ serves {sorted(used - _served_pools())}"
    image = _services()["worker"]["image"]
    for where, value in _walk(project):
        if where.endswith("job_variables.image"):
            assert value == image, f"deployments/prefect.yaml{where}={value}, infra builds {image}"
    kubernetes_pool = _helm("prefect-worker-kubernetes.values.yaml")["worker"]["config"]
    namespaces = {v for w, v in _walk(project) if w.endswith("job_variables.namespace")}
    assert namespaces <= {_namespace()}
    pools = {v for w, v in _walk(project) if w.endswith("work_pool.name")}
    assert kubernetes_pool["workPool"] in pools
    if "prefect-version" in project:
        assert str(project["prefect-version"]) == _pin("prefect")


def _is_flow(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "flow") or (
        isinstance(target, ast.Attribute) and target.attr == "flow"
    )


def test_flow_entrypoints_named_by_infra_and_deployments_are_flows() -> None:
    texts = [(INFRA / "README.md").read_text()]
    if PREFECT_YAML.exists():
        texts.append(PREFECT_YAML.read_text())
    entrypoints = {m for t in texts for m in re.findall(r"\b(flows/\w+\.py):(\w+)", t)}
    assert ("flows/products.py", "monitor") in entrypoints
    for file, function in sorted(entrypoints):
        path = REPO / file
        assert path.is_file(), f"entrypoint {file}:{function}: no such file"
        defs = {
            node.name: node
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert function in defs, f"entrypoint {file}:{function}: no such function"
        assert any(_is_flow(d) for d in defs[function].decorator_list), (
            f"entrypoint {file}:{function} is not a @flow"
        )


# ---- infra/bootstrap.py, run for real ------------------------------------------------------------
@pytest.fixture(scope="module")
def bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infra_bootstrap", INFRA / "bootstrap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bucket_of_takes_the_bucket_and_rejects_other_urls(bootstrap: ModuleType) -> None:
    from tasks.errors import InputError

    assert bootstrap.bucket_of("s3://eo-products/pipeline/x") == "eo-products"
    assert bootstrap.bucket_of("s3://eo-products") == "eo-products"
    for bad in ("demo-output", "/data/output", "s3://", "gs://bucket/x"):
        with pytest.raises(InputError, match="EO_OUTPUT_URL"):
            bootstrap.bucket_of(bad)


def test_ensure_bucket_creates_the_bucket_once_on_an_s3_server(
    bootstrap: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs
    from moto.server import ThreadedMotoServer

    from tasks.settings import get_settings

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # moto keeps buckets across servers of one process: a name no other test uses
    bucket = f"eo-products-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EO_OUTPUT_URL", f"s3://{bucket}/pipeline")
    monkeypatch.setenv("EO_S3_ENDPOINT_URL", endpoint)
    get_settings.cache_clear()
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        assert not fs.exists(bucket)
        assert bootstrap.main(["create-bucket", "--wait", "5"]) == 0
        fs.invalidate_cache()
        assert fs.exists(bucket)
        assert bootstrap.ensure_bucket(f"s3://{bucket}/other", wait_s=0) is False
    finally:
        server.stop()
        get_settings.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()


def test_ensure_bucket_reports_an_unreachable_store(
    bootstrap: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore retries a refused connection for seconds; the store answers at once here.
    from botocore.exceptions import EndpointConnectionError

    import tasks.storage
    from tasks.errors import ServiceUnavailableError

    calls: list[str] = []

    class Refusing:
        def call_s3(self, method: str, **kwargs: Any) -> None:
            calls.append(method)
            raise EndpointConnectionError(endpoint_url="http://minio:9000/eo-products")

    class Store:
        fs = Refusing()

    monkeypatch.setattr(tasks.storage, "open_store", lambda url, endpoint_url=None: Store())
    with pytest.raises(ServiceUnavailableError, match="EO_S3_ENDPOINT_URL"):
        bootstrap.ensure_bucket("s3://eo-products/x", endpoint_url="http://minio:9000", wait_s=0)
    assert calls == ["head_bucket"], "gave up without asking or created a bucket anyway"


def test_serve_stac_links_use_the_public_address(
    bootstrap: ModuleType, tiny_archive: ArchiveInfo
) -> None:
    port = _free_port()
    public = "http://stac:7822"
    cmd = bootstrap.stac_serve_command(tiny_archive.root, addr=public, bind=f"127.0.0.1:{port}")
    assert cmd[1:6] == ["serve", "--addr", public, "--bind", f"127.0.0.1:{port}"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        local = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not bootstrap.http_ok(f"{local}/collections", timeout=1):
            assert process.poll() is None, "rustac serve exited"
            assert time.monotonic() < deadline, "rustac serve did not answer"
            time.sleep(0.1)
        collections = httpx.get(f"{local}/collections").json()["collections"]
        assert {c["id"] for c in collections} == set(tiny_archive.n_items)
        page = httpx.get(f"{local}/search", params={"limit": 1}).json()
        links = {link["rel"]: link["href"] for link in page["links"]}
        assert links["next"].startswith(public + "/"), links
        assert bootstrap.main(["http-ok", f"{local}/collections"]) == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert bootstrap.main(["http-ok", f"{local}/collections", "--timeout", "1"]) == 1
