"""Timing tune's variants on the device itself (``--docker-host``): each variant and the fp32 model
are copied into a container of the target's serving image on the device's Docker engine, and
`edgeopt bench` runs them there, one after the other, on the same real inputs."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable, Optional

from ..artifact import Artifact


class DeviceTimer:
    def __init__(self, parent: Artifact, target, docker_host: str, data: str, work: Path, say: Callable[[str], None],
                 image: Optional[str] = None, base_image: Optional[str] = None):
        from ..package.deploy import _data_archive, _ship_to

        self.docker_host, self.say = docker_host, say
        if image is None:  # the target's serving image, with the fp32 model in it
            from ..package.bundle import PackageConfig, package

            say(f"packaging {parent.path} for {target.name}: variants are timed in its image on {docker_host}")
            image = package(parent, work / "device-bundle", PackageConfig(target=target.name, base_image=base_image),
                            on_status=say).path
        self.ship = _ship_to(str(image), docker_host, say)
        target_of_image = self.ship.labels.get("io.edgeopt.target")
        if target_of_image and target_of_image != target.name:
            from ..errors import ConfigError

            raise ConfigError(f"--image {image} is built for target '{target_of_image}', not '{target.name}'; "
                              f"give --target {target_of_image} or an image for {target.name}")
        self.data_tar, self.data_name = _data_archive(data, parent.manifest.task)

    def time(self, ref: Path, variant: Path, batch_sizes: list[int], seq_len, runs: int, threads: Optional[int]) -> dict:
        """Per batch size: ms of the variant, ms of fp32, their ratio, as bench measures them on the device."""
        from ..package.deploy import bench_in_container

        args = ["/tmp/edgeopt-tune/ref", "/tmp/edgeopt-tune/variant", "--batch-sizes", ",".join(map(str, batch_sizes)),
                "--seq-len", str(seq_len), "--runs", str(runs), "--warmup", "2",
                "--data", f"/tmp/edgeopt-data/{self.data_name}", *(["--threads", str(threads)] if threads else [])]
        variants = _folders_tar({"edgeopt-tune/ref": ref, "edgeopt-tune/variant": variant})
        rep = bench_in_container(self.ship, args, [self.data_tar, variants], self.docker_host)
        self.machine = rep.machine
        rows = {(r.path.rstrip("/").rsplit("/", 1)[-1], r.batch_size): r for r in rep.rows}
        res = {}
        for b in batch_sizes:
            v, f = rows[("variant", b)], rows[("ref", b)]
            res[b] = {"ms": v.p50_ms, "ref_ms": f.p50_ms, "speedup": f.p50_ms / v.p50_ms if v.p50_ms else 0.0,
                      "seq": v.seq_len}
        return res


def _folders_tar(folders: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, folder in folders.items():
            t.add(str(folder), arcname=name)
    return buf.getvalue()


def variant_artifact(parent: Artifact, folder: Path, session_config: dict[str, str]) -> None:
    """Make ``folder`` (holding the variant's model.onnx) an artifact bench can load: manifest, tokenizer."""
    from ..artifact import finalize
    from ..stages.quantize import _copy_preprocessing

    pm = parent.manifest
    _copy_preprocessing(parent, folder)
    model = {**pm.model.model_dump(), "file": "model.onnx", "precision": "int8", "session_config": dict(session_config)}
    finalize(folder, pm.child(stage="tune-variant", config={}, model=model))
