"""Build (and push) a bundle's image on a Docker engine."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DockerUnavailable, StageError
from .bundle import Bundle, load_bundle, update_bundle
from .engine import build, connect, engine_arch, image_arch, push


def build_bundle(path: Path, push_image: bool = False, client=None, on_status: Callable[[str], None] = lambda s: None,
                 on_line: Callable[[str], None] = lambda s: None) -> Bundle:
    """Build the bundle's image with the classic builder (platform from the target); record its id,
    size and architecture in bundle.json. Without a Docker engine the bundle stays, and the error says
    how to build it later."""
    bundle = load_bundle(path)
    try:
        client = client or connect()
    except DockerUnavailable as e:
        raise DockerUnavailable(f"{e}. The bundle is written at {bundle.path}; build it later with "
                                f"`docker build --platform {bundle.platform} -t {bundle.tag} {bundle.path}`") from e
    host = engine_arch(client)
    want = bundle.platform.split("/")[1]
    if host != want:
        on_status(f"building a {want} image on a {host} engine: steps run under emulation (qemu), slowly")
    on_status(f"building {bundle.tag} ({bundle.platform}) FROM {bundle.base_image}")
    image = build(client, bundle.path, bundle.tag, bundle.platform, {"BASE_IMAGE": bundle.base_image}, on_line=on_line)
    got = image_arch(image)
    if got != want:
        raise StageError(f"the image {bundle.tag} was built for {got}, not {want}: the base image {bundle.base_image} "
                         f"is {got}; give --base-image an {want} image")
    bundle.image = {"id": image.id, "size_bytes": int(image.attrs.get("Size", 0)), "architecture": got,
                    "engine": client.api.base_url}
    if push_image:
        on_status(f"pushing {bundle.tag}")
        bundle.image["pushed_digest"] = push(client, bundle.tag)
    update_bundle(bundle)
    return bundle
