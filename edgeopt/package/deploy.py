"""Ship an image to a device's Docker engine without a registry, start it, and benchmark on it.

`edgeopt deploy IMAGE_OR_BUNDLE --docker-host ssh://user@device` and
`edgeopt bench IMAGE_OR_BUNDLE --docker-host ssh://user@device` (the in-container benchmark)."""
from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from pydantic import BaseModel

from ..errors import ConfigError, StageError, TargetError
from ..outputs import BUNDLE_FILE
from .engine import connect, engine_arch, image_arch, ship



class Deployment(BaseModel):
    url: str
    name: str
    image: str
    docker_host: str
    container_id: str
    shipped: bool  # False: the device already had this image
    ready_s: float  # from container start to /readyz answering 200
    task: Optional[str] = None  # the served model's task (the image's io.edgeopt.task label)
    routes: list[str] = []  # what to POST to


def resolve_image(ref: str, local, on_status: Callable[[str], None]) -> str:
    """An image tag from IMAGE or BUNDLE (a bundle's image is built here if this engine lacks it)."""
    p = Path(ref).expanduser()
    if (p / BUNDLE_FILE).is_file():
        from .build import build_bundle
        from .bundle import load_bundle

        b = load_bundle(p)
        try:
            img = local.images.get(b.tag)
            if b.image and b.image.get("id") not in (None, img.id):
                raise LookupError  # the tag now names another image: rebuild from this bundle
        except Exception:
            on_status(f"building {b.tag} from {b.path}")
            b = build_bundle(p, client=local, on_status=on_status)
        return b.tag
    if p.exists():
        raise ConfigError(f"{ref}: a folder but not an edgeopt bundle (no {BUNDLE_FILE}); give a bundle from `edgeopt package` or an image name")
    try:
        local.images.get(ref)
    except Exception:
        raise ConfigError(f"{ref}: no such image on the local Docker engine, and not a bundle folder; build it with "
                          "`edgeopt package ARTIFACT --target T -o BUNDLE --build`") from None
    return ref


def _check_arch(local, remote, tag: str, docker_host: str) -> str:
    arch = image_arch(local.images.get(tag))
    device = engine_arch(remote)
    if arch and device and arch != device:
        raise TargetError(f"{tag} is an {arch} image but {docker_host} is {device}; package for the device's target "
                          f"(e.g. --target {'rpi5' if device == 'arm64' else 'x86'}) and deploy that")
    return arch


@dataclass
class _Shipped:
    """An image on the device's engine, with what starting it there takes."""
    remote: Any  # docker.DockerClient
    tag: str
    labels: dict
    shipped: bool
    run_kwargs: dict  # the NVIDIA runtime and the engine-cache volume, for the targets that need them


def _ship_to(ref: str, docker_host: str, on_status: Callable[[str], None]) -> _Shipped:
    """Connect to both engines, resolve (or build) the image, check its architecture against the
    device's, and copy it there unless it is already there."""
    from ..targets import get_target

    local = connect()
    remote = connect(docker_host)
    tag = resolve_image(ref, local, on_status)
    _check_arch(local, remote, tag, docker_host)
    shipped = ship(local, remote, tag, on_progress=on_status)
    labels = remote.images.get(tag).attrs.get("Config", {}).get("Labels") or {}
    target = labels.get("io.edgeopt.target")
    spec = get_target(target) if target else None
    kwargs: dict = {}
    if spec is not None and spec.engine.policy == "build-on-device":
        kwargs["volumes"] = {"edgeopt-engines": {"bind": spec.engine.cache_dir, "mode": "rw"}}
    if spec is not None and spec.docker is not None and spec.docker.runtime:
        kwargs["runtime"] = spec.docker.runtime
    return _Shipped(remote=remote, tag=tag, labels=labels, shipped=shipped, run_kwargs=kwargs)


def _host_of(docker_host: str) -> str:
    u = urlparse(docker_host)
    return u.hostname or "127.0.0.1" if u.scheme in ("ssh", "tcp", "http", "https") else "127.0.0.1"


def deploy(ref: str, docker_host: str, port: int = 8000, name: Optional[str] = None, wait_s: float = 300,
           env: Optional[dict[str, str]] = None, on_status: Callable[[str], None] = lambda s: None) -> Deployment:
    sh = _ship_to(ref, docker_host, on_status)
    remote, tag, target = sh.remote, sh.tag, sh.labels.get("io.edgeopt.target", "")
    name = name or "edgeopt-" + (tag.rsplit("/", 1)[-1].split(":")[0] or "model")
    _remove_previous(remote, name, docker_host)
    _check_port(remote, port, docker_host)
    container_port = _exposed_port(remote, tag)
    on_status(f"starting {name} on {docker_host}")
    import docker

    try:
        c = remote.containers.run(tag, detach=True, name=name, ports={f"{container_port}/tcp": port},
                                  restart_policy={"Name": "unless-stopped"}, environment=env or {},
                                  labels={"io.edgeopt.deployed": "1"}, **sh.run_kwargs)
    except docker.errors.APIError as e:
        msg = " ".join((e.explanation or str(e)).split())
        if "port is already allocated" in msg or "address already in use" in msg:
            _cleanup(remote, name)
            raise ConfigError(f"port {port} on {docker_host} is already in use; pick another with --port") from e
        if "runtime" in msg and "nvidia" in msg:
            _cleanup(remote, name)
            raise TargetError(f"{docker_host} has no NVIDIA container runtime, which {target} images need; install "
                              "nvidia-container-toolkit on the device") from e
        _cleanup(remote, name)
        raise StageError(f"starting {tag} on {docker_host} failed: {msg[:300]}") from e
    t0 = time.monotonic()
    ready = _wait_ready(c, container_port, wait_s)
    if not ready:
        c.reload()
        logs = c.logs(tail=5).decode("utf-8", "replace").strip().splitlines()
        state = c.attrs.get("State", {}).get("Status")
        raise StageError(f"{name} on {docker_host} did not become ready within {wait_s:.0f} s (state {state}); "
                         f"last log line: {logs[-1] if logs else 'none'}; see `docker logs {name}` there")
    return Deployment(url=f"http://{_host_of(docker_host)}:{port}", name=name, image=tag, docker_host=docker_host,
                      container_id=c.id, shipped=sh.shipped, ready_s=time.monotonic() - t0,
                      task=sh.labels.get("io.edgeopt.task"), routes=_routes(sh.labels.get("io.edgeopt.task")))


def _routes(task: Optional[str]) -> list[str]:
    if task == "text-generation":  # OpenAI's completion routes (edgeopt.serve.llm)
        return ["/v1/completions", "/v1/chat/completions"]
    return ["/v1/predict"]


def _exposed_port(client, tag: str) -> int:
    exposed = client.images.get(tag).attrs.get("Config", {}).get("ExposedPorts") or {}
    for k in exposed:
        return int(k.split("/")[0])
    return 8000


def _remove_previous(remote, name: str, docker_host: str) -> None:
    """A container of that name is replaced only if edgeopt deployed it."""
    try:
        old = remote.containers.get(name)
    except Exception:
        return
    if (old.labels or {}).get("io.edgeopt.deployed") != "1":
        raise ConfigError(f"a container named {name} already runs on {docker_host} and edgeopt did not start it; "
                          "pick another --name")
    old.remove(force=True)


def _check_port(remote, port: int, docker_host: str) -> None:
    for c in remote.containers.list():
        for bindings in (c.attrs.get("HostConfig", {}).get("PortBindings") or {}).values():
            for b in bindings or []:
                if str(b.get("HostPort")) == str(port):
                    raise ConfigError(f"port {port} on {docker_host} is used by container {c.name}; pick another with --port")


def _cleanup(remote, name: str) -> None:
    try:
        remote.containers.get(name).remove(force=True)
    except Exception:
        pass


def _wait_ready(c, container_port: int, wait_s: float) -> bool:
    """Poll /readyz from inside the container (works whatever the device's firewall lets through)."""
    probe = ["/opt/edgeopt/bin/python", "-c",
             f"import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{container_port}/readyz', "
             "timeout=3).status == 200 else 1)"]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        c.reload()
        if c.status in ("exited", "dead"):
            return False
        if c.status == "running":
            try:
                if c.exec_run(probe, user="10001").exit_code == 0:
                    return True
            except Exception:
                pass
        time.sleep(0.5)
    return False


# ---------------------------------------------------------------------------------------------
# On-device benchmark

def remote_bench(ref: str, docker_host: str, args: list[str], data: Optional[str] = None, timeout_s: float = 1800,
                 on_status: Callable[[str], None] = lambda s: None, lm_args: Optional[list[str]] = None,
                 require_lm: bool = False):
    """Run `edgeopt bench /opt/model --json ARGS` in the image on the device's engine; the report,
    its machine labelled with the device (CPU, cores, board, L4T release). A language model's image runs
    ``lm_args`` instead (time to first token and decode tokens/s, edgeopt.bench.llm); ``require_lm``
    (language-model options were given) refuses another model's image."""
    task = _image_task(ref)
    if require_lm and task not in (None, "text-generation"):
        raise ConfigError(f"--prompt-lengths and --new-tokens are for language models; {ref} serves a {task} model")
    payload = None
    if data:  # a bad file or the wrong kind of data fails here, before anything is shipped
        payload, name = _data_archive(data, task)
    sh = _ship_to(ref, docker_host, on_status)
    tag, labels, target = sh.tag, sh.labels, sh.labels.get("io.edgeopt.target")
    lm = labels.get("io.edgeopt.task") == "text-generation"
    if require_lm and not lm:
        raise ConfigError(f"--prompt-lengths and --new-tokens are for language models; {tag} serves a "
                          f"{labels.get('io.edgeopt.task', 'non-language')} model")
    cmd = ["/opt/model", *((lm_args or []) if lm else args)]
    if payload is not None:
        cmd += ["--data", f"/tmp/edgeopt-data/{name}"]
    on_status(f"benchmarking {tag} on {docker_host}")
    if lm:
        from ..bench.llm import LLMBenchReport

        report = bench_in_container(sh, cmd, [payload] if payload is not None else [], docker_host, timeout_s,
                                    report_type=LLMBenchReport)
    else:
        report = bench_in_container(sh, cmd, [payload] if payload is not None else [], docker_host, timeout_s)
    report.machine.update({"docker_host": docker_host, "image": tag, "target": target})
    title = labels.get("org.opencontainers.image.title")
    for row in report.rows:  # the image holds the model as /opt/model: name it as packaged
        row.artifact, row.path = title or row.artifact, f"{tag}:{row.path}"
    return report


def bench_in_container(sh: _Shipped, args: list[str], archives: list[bytes], docker_host: str, timeout_s: float = 1800,
                       report_type=None):
    """`edgeopt bench ARGS --json` in a fresh container of the shipped image, with ``archives`` (tars)
    unpacked into its /tmp and the host's /etc and /sys/firmware mounted read-only (the board and L4T
    release in the report); the container is removed. The report (a ``report_type``, default BenchReport),
    or a StageError saying why not."""
    import docker

    from ..bench.core import BenchReport

    report_type = report_type or BenchReport

    mounts = [docker.types.Mount("/host/etc", "/etc", type="bind", read_only=True),
              docker.types.Mount("/host/sys/firmware", "/sys/firmware", type="bind", read_only=True)]
    c = sh.remote.containers.create(sh.tag, entrypoint=["/opt/edgeopt/bin/edgeopt"], command=["bench", *args, "--json"],
                                    mounts=mounts, environment={"EDGEOPT_HOST_ROOT": "/host", "EDGEOPT_QUIET": "1"},
                                    **sh.run_kwargs)
    try:
        for tar in archives:
            c.put_archive("/tmp", tar)
        c.start()
        try:
            rc = c.wait(timeout=timeout_s).get("StatusCode", 1)
        except Exception as e:
            raise StageError(f"the benchmark on {docker_host} did not finish within {timeout_s:.0f} s") from e
        out = c.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        err = c.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip().splitlines()
        if rc != 0:
            last = next((ln for ln in reversed(err) if ln.strip()), "no output")
            raise StageError(f"the benchmark in {sh.tag} on {docker_host} failed (exit {rc}): {last[:300]}")
    finally:
        try:
            c.remove(force=True)
        except Exception:
            pass
    try:
        doc = json.loads(out[out.index("{"):])
    except ValueError as e:
        raise StageError(f"the benchmark on {docker_host} printed no JSON report") from e
    doc.pop("written", None)
    return report_type.model_validate(doc)


def _image_task(ref: str) -> Optional[str]:
    """The task of a bundle's model (None for an image name: then the data's kind is checked in the image)."""
    p = Path(ref).expanduser()
    if (p / BUNDLE_FILE).is_file():
        from .bundle import load_bundle

        return load_bundle(p).model.get("task")
    return None


def _data_archive(data: str, task: Optional[str]) -> tuple[bytes, str]:
    """A tar for put_archive with the bench data as a file the image can read (sklearn: specs are
    converted to .npz here: the image has no scikit-learn). Checked here against the model's task."""
    import numpy as np

    from ..data import load_dataset

    p = Path(data).expanduser()
    ds = load_dataset(p if p.is_file() else data)  # a bad file fails here, with the host path
    want = None if task is None else ("image" if task.startswith("image") else "text")
    if want is not None and ds.kind != want:
        raise ConfigError(f"--data {data}: {ds.kind} data for a model that takes {want} input")
    if p.is_file():
        body, name = p.read_bytes(), p.name
    else:
        buf = io.BytesIO()
        arrays = {"images": np.asarray(ds.samples, np.float32)}
        if ds.labels is not None:
            arrays["labels"] = np.asarray(ds.labels)
        np.savez(buf, **arrays)
        body, name = buf.getvalue(), "data.npz"
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        d = tarfile.TarInfo("edgeopt-data")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        t.addfile(d)
        info = tarfile.TarInfo(f"edgeopt-data/{name}")
        info.size, info.mode = len(body), 0o644
        t.addfile(info, io.BytesIO(body))
    return tar.getvalue(), name


__all__ = ["Deployment", "deploy", "remote_bench"]
