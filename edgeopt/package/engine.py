"""Talking to Docker engines through the Docker Engine API (the `docker` SDK, extra [package]):
the local one, or a device's over ssh:// — connect, build, push, ship an image without a registry."""
from __future__ import annotations

import subprocess
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

from .._optional import require
from ..errors import ConfigError, DockerUnavailable, StageError

ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def check_host_url(url: str) -> None:
    u = urlparse(url)
    if u.scheme not in ("ssh", "tcp", "unix", "http", "https") or (u.scheme == "ssh" and not u.hostname):
        raise ConfigError(f"--docker-host {url}: give ssh://USER@DEVICE[:PORT] (or tcp://HOST:2376, unix:///PATH)")


def _ssh_precheck(url: str) -> None:
    """One ssh round trip with a timeout, so an unreachable device or a missing key is one line
    (the SDK's own ssh transport would hang or print a traceback)."""
    u = urlparse(url)
    target = f"{u.username}@{u.hostname}" if u.username else u.hostname
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *(["-p", str(u.port)] if u.port else []),
           target, "docker version --format '{{.Server.Version}}'"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
    except FileNotFoundError:
        raise DockerUnavailable("ssh is not installed here; install openssh-client to reach --docker-host ssh://...") from None
    except subprocess.TimeoutExpired:
        raise DockerUnavailable(f"{url}: no answer over ssh within 40 s; check the device is on and reachable") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")]
        why = lines[-1] if lines else f"ssh exit {proc.returncode}"
        hint = ""
        if "Permission denied" in why:
            hint = f"; add your key to the device (ssh-copy-id {target})"
        elif "command not found" in why or proc.returncode == 127:
            hint = "; install Docker on the device"
        elif "Cannot connect to the Docker daemon" in why or "permission denied while trying to connect" in why:
            hint = "; start Docker on the device (sudo systemctl start docker) or add the user to the docker group"
        raise DockerUnavailable(f"{url}: {why}{hint}")


def connect(url: Optional[str] = None, timeout: int = 600):
    """A docker.DockerClient for ``url`` (None: DOCKER_HOST or the local socket); one line if none answers."""
    require("package", purpose="building and shipping Docker images")
    import docker

    if url is not None:
        check_host_url(url)
        if url.startswith("ssh://"):
            _ssh_precheck(url)
    try:
        if url is None:
            client = docker.from_env(timeout=timeout)
        else:
            client = docker.DockerClient(base_url=url, timeout=timeout)  # ssh:// through paramiko (docker[ssh])
        client.ping()
        return client
    except Exception as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if url is None:
            raise DockerUnavailable(f"no Docker engine answers here ({why}); start one (`sudo systemctl start docker`, "
                                    "or `sudo dockerd &`) or point DOCKER_HOST at one") from e
        raise DockerUnavailable(f"{url}: the Docker engine does not answer ({why})") from e


def engine_arch(client) -> str:
    raw = client.info().get("Architecture", "")
    return ARCH.get(raw, raw)


def image_arch(image) -> str:
    return ARCH.get(image.attrs.get("Architecture", ""), image.attrs.get("Architecture", ""))


def build(client, context: str, tag: str, platform: str, buildargs: dict[str, str],
          on_line: Callable[[str], None] = lambda s: None):
    """Build through the Engine API's classic builder; the image, or StageError with the failing step."""
    import docker

    last: list[str] = []
    try:
        for chunk in client.api.build(path=context, tag=tag, platform=platform, buildargs=buildargs, rm=True,
                                      forcerm=True, pull=False, decode=True):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        last = (last + [line.rstrip()])[-15:]
                        on_line(line.rstrip())
            if "error" in chunk:
                err = chunk["error"].strip()
                raise StageError(f"docker build of {tag} failed: {_explain_build_error(err, buildargs)}"
                                 + (f" (last output: {last[-1]})" if last and last[-1] not in err else ""))
    except docker.errors.APIError as e:
        raise StageError(f"docker build of {tag} failed: {_explain_build_error(e.explanation or str(e), buildargs)}") from e
    return client.images.get(tag)


def _explain_build_error(err: str, buildargs: dict[str, str]) -> str:
    err = " ".join(err.split())
    base = buildargs.get("BASE_IMAGE", "")
    if any(s in err for s in ("pull access denied", "manifest unknown", "no such host", "dial tcp", "failed to resolve",
                              "not found", "TLS handshake")) and base:
        return (f"{err[:300]}; the base image {base} is neither on this engine nor reachable: `docker pull {base}` where a "
                "registry is reachable, or pass --base-image IMAGE naming one this engine has (e.g. built by docker/local-base.sh)")
    if "No matching distribution" in err or "is not a supported wheel" in err:
        return (f"{err[:300]}; the base image's Python differs from the target's (the wheelhouse is built for it): "
                "pick a base with the target's Python")
    return err[:500]


def push(client, tag: str) -> str:
    """Push ``tag``; the pushed digest, or one line naming the registry and how to log in."""
    repo, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    registry = repo.split("/")[0] if "/" in repo and ("." in repo.split("/")[0] or ":" in repo.split("/")[0]) else "docker.io"
    digest = None
    try:
        for chunk in client.images.push(repo, tag=version or "latest", stream=True, decode=True):
            if "error" in chunk:
                err = " ".join(chunk["error"].split())
                hint = (f"; log in first: docker login {registry}" if any(s in err.lower() for s in
                        ("unauthorized", "denied", "authentication required", "no basic auth")) else "")
                if "/" not in repo and not hint:
                    hint = "; tag the image for your registry with --tag REGISTRY/NAME:TAG"
                raise StageError(f"push of {tag} to {registry} failed: {err[:300]}{hint}")
            digest = (chunk.get("aux") or {}).get("Digest", digest)
    except StageError:
        raise
    except Exception as e:
        raise StageError(f"push of {tag} to {registry} failed: {str(e).splitlines()[0][:300]}") from e
    return digest or ""


def ship(local, remote, tag: str, on_progress: Callable[[str], None] = lambda s: None) -> bool:
    """Copy image ``tag`` into the remote engine without a registry (docker save | docker load,
    streamed). False if the remote already holds the same image."""
    image = local.images.get(tag)
    try:
        if remote.images.get(tag).id == image.id:
            return False
    except Exception:
        pass
    size = image.attrs.get("Size", 0)
    on_progress(f"shipping {tag} ({size / 1e6:.0f} MB uncompressed)")
    stream: Iterator[bytes] = image.save(named=True)
    try:
        remote.images.load(stream)
    except Exception as e:
        raise StageError(f"loading {tag} into the remote engine failed: {str(e).splitlines()[0][:300]}") from e
    return True
