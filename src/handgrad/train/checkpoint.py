"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar; no pickle anywhere.

A checkpoint is two files side by side::

    best.safetensors   model.<name>       the weights (and buffers)
                       optim.<name>       optimizer state (moments, ...)
                       rng.torch_cpu      torch's CPU generator state (uint8)
                       callbacks.<cb>.<k> tensor state of callbacks (the recorder's curves)
    best.json          format, id, weights_sha256, model {name, kwargs}, config, data,
                       epoch (epochs completed), step, optimizer {class, meta}, loader
                       {epoch, batch, seed}, callbacks (their JSON state), metrics, versions

The two belong together: both carry the same random ``id`` (the safetensors header's metadata,
and the sidecar), and the sidecar holds the SHA-256 of the weights file, so a mismatched pair
or a corrupted weights file is an error, never silently loaded.

Writing is atomic. Both files are written to temporary names in the same folder and fsynced;
then each is renamed over its target, the sidecar last, and the folder is fsynced. If anything
fails before the renames, the previous checkpoint is untouched; if it fails between them, the
previous files (kept as hard links during the renames) are put back. A kill between the two
renames leaves the new weights beside the old sidecar and the old weights' backup: loading then
reads the backup (the pair the sidecar describes), and :func:`tidy_checkpoint` puts it back and
removes what an interrupted save left behind. Weights holding NaN or Inf never load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from handgrad._io import give_user_mode, temporary_beside
from handgrad._version import __version__
from handgrad.errors import HandgradError
from handgrad.train.learner import Learner

FORMAT = "handgrad-checkpoint/1"

# For tests only: HANDGRAD_CHECKPOINT_KILL_AT=N kills this process (SIGKILL: no clean-up runs)
# at the N-th step of writing checkpoints, so a test can see what a kill at that moment leaves.
KILL_AT = "HANDGRAD_CHECKPOINT_KILL_AT"
_steps_taken = 0


def _step() -> None:
    """One step of a save is done (a test may kill the process here, see ``KILL_AT``)."""
    global _steps_taken
    at = os.environ.get(KILL_AT)
    if not at:
        return
    _steps_taken += 1
    if _steps_taken == int(at):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# ------------------------------------------------------------------------------------ paths
def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, sidecar)`` for ``run/best.safetensors``, ``run/best.json`` or ``run/best``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _backup(target: Path) -> Path:
    """Where a save keeps ``target``'s previous version until its new pair is in place."""
    return target.with_name(f".{target.name}.bak")


# ----------------------------------------------------------------------------------- saving
def save_checkpoint(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], info: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` (safetensors) and ``info`` (JSON-able) as one checkpoint, atomically.

    Returns the weights path. ``info`` must not use the keys ``format``, ``id``, ``weights``
    and ``weights_sha256``, which are added here.
    """
    weights, sidecar = checkpoint_paths(path)
    ckpt_id = uuid.uuid4().hex
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = safetensors.torch.save(plain, metadata={"format": FORMAT, "id": ckpt_id})
    header = {
        "format": FORMAT,
        "id": ckpt_id,
        "weights": weights.name,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    text = json.dumps(header | dict(info), indent=2) + "\n"
    weights.parent.mkdir(parents=True, exist_ok=True)
    _commit([(weights, data), (sidecar, text.encode())])
    return weights


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(files: list[tuple[Path, bytes]]) -> None:
    """Replace each target with its data so that either all or none change (see module doc)."""
    with ExitStack() as stack:  # temporary files not renamed into place are removed on exit
        temps: list[tuple[Path, Path]] = []
        for target, data in files:
            tmp = stack.enter_context(temporary_beside(target))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            give_user_mode(tmp)
            temps.append((tmp, target))
            _step()
        _replace_all(temps)


def _replace_all(temps: list[tuple[Path, Path]]) -> None:
    """Rename each temporary file onto its target, all or none (the old files are kept as
    hard-linked backups until every rename is done)."""
    backups: list[tuple[Path, Path]] = []
    renamed: list[Path] = []
    try:
        for _, target in temps:
            if target.exists():
                bak = _backup(target)
                bak.unlink(missing_ok=True)
                try:
                    os.link(target, bak)
                except OSError:  # no hard links here (some network/FAT file systems)
                    shutil.copy2(target, bak)
                backups.append((bak, target))
        _step()
        for tmp, target in temps:
            os.replace(tmp, target)
            renamed.append(target)
            _step()
        _fsync_dir(temps[0][1].parent)
    except BaseException:
        # Put the previous checkpoint back whole; remove any half of a new one.
        backed_up = {target for _, target in backups}
        for bak, target in backups:
            if target in renamed:
                os.replace(bak, target)
            else:  # still the old file (a hard link to it: rename would be a no-op)
                bak.unlink(missing_ok=True)
        for target in renamed:
            if target not in backed_up:
                target.unlink(missing_ok=True)
        raise
    for bak, _ in backups:
        bak.unlink(missing_ok=True)
    _step()


def tidy_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Finish what an interrupted save of ``path`` left behind: put the previous weights back
    when a kill came between the two renames, and remove temporary and backup files. Returns
    one phrase per thing done (empty when there was nothing to do)."""
    weights, sidecar = checkpoint_paths(path)
    done = []
    bak = _backup(weights)
    own = _sidecar_id(sidecar)
    if own is not None and _weights_id(weights) != own and _weights_id(bak) == own:
        os.replace(bak, weights)
        done.append(f"put back the previous {weights.name} (its save was interrupted)")
    unrenamed = None if sidecar.exists() else _unrenamed_sidecar(weights, sidecar)
    if unrenamed is not None:
        os.replace(unrenamed, sidecar)
        done.append(f"completed the interrupted save of {weights.name}")
    leftovers = [
        *weights.parent.glob(f".{weights.name}.*.tmp"),
        *weights.parent.glob(f".{sidecar.name}.*.tmp"),
        *(p for p in (bak, _backup(sidecar)) if p.is_file()),
    ]
    for p in leftovers:
        p.unlink(missing_ok=True)
    if leftovers:
        done.append(f"removed {len(leftovers)} file(s) an interrupted save of {weights.name} left")
    return done


def _weights_id(weights: Path) -> str | None:
    """The checkpoint id in a weights file's header, or ``None`` if it cannot be read."""
    try:
        with open(weights, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            meta = _read_header(head + f.read(min(n, 1 << 24)), weights).get("__metadata__")
    except (OSError, HandgradError):
        return None
    return meta.get("id") if isinstance(meta, dict) else None


def _unrenamed_sidecar(weights: Path, sidecar: Path) -> Path | None:
    """The temporary sidecar (written whole) of the save that renamed ``weights`` into
    place and was killed before renaming this one, if there is one."""
    own = _weights_id(weights) if weights.is_file() else None
    found = (p for p in weights.parent.glob(f".{sidecar.name}.*.tmp") if _sidecar_id(p) == own)
    return next(found, None) if own is not None else None


def _sidecar_id(sidecar: Path) -> str | None:
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info.get("id") if isinstance(info, dict) else None


# ---------------------------------------------------------------------------------- loading
@dataclass
class Checkpoint:
    """A loaded checkpoint: the sidecar's ``info`` and every tensor by name."""

    path: Path
    info: dict[str, Any]
    tensors: dict[str, Tensor]

    def group(self, prefix: str) -> dict[str, Tensor]:
        """Tensors named ``<prefix>.<rest>``, keyed by ``<rest>``."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def model_state(self) -> dict[str, Tensor]:
        return self.group("model")


def _read_header(data: bytes, weights: Path) -> dict[str, Any]:
    """Parse the safetensors header (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise HandgradError(f"{weights}: truncated ({len(data)} bytes), not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise HandgradError(f"{weights}: truncated or not a safetensors file (bad header size)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandgradError(f"{weights}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise HandgradError(f"{weights}: corrupt safetensors header (not a JSON object)")
    return header


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`~handgrad.errors.HandgradError` (one line) when a file is missing,
    truncated or corrupt, or when the two files do not belong to the same save.
    """
    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise HandgradError(
            f"{weights}: no such checkpoint; give the .safetensors written by handgrad train "
            "(e.g. runs/<run>/best.safetensors)"
        )
    # A first save killed between its two renames left the sidecar under its temporary name.
    text_from = sidecar if sidecar.is_file() else _unrenamed_sidecar(weights, sidecar)
    if text_from is None:
        raise HandgradError(
            f"{sidecar}: missing; a checkpoint is the .safetensors and its .json sidecar, "
            "keep both files together"
        )
    try:
        info = json.loads(text_from.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandgradError(f"{sidecar}: corrupt JSON sidecar ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise HandgradError(f"{sidecar}: not a handgrad checkpoint sidecar (format {FORMAT})")
    data = weights.read_bytes()
    meta = _read_header(data, weights).get("__metadata__") or {}
    if meta.get("id") != info.get("id"):
        # A save killed between its two renames: the backup holds the weights of this sidecar.
        if info.get("id") is None or _weights_id(_backup(weights)) != info["id"]:
            raise HandgradError(
                f"{weights}: does not belong to {sidecar.name} (checkpoint ids differ); keep "
                "the two files of one save together"
            )
        data = _backup(weights).read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("weights_sha256"):
        raise HandgradError(
            f"{weights}: corrupt (its SHA-256 differs from the one in {sidecar.name}); "
            "use another checkpoint, e.g. last.safetensors"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise HandgradError(f"{weights}: corrupt safetensors data ({exc})") from exc
    bad = [
        name
        for name, t in tensors.items()
        if name.startswith(("model.", "optim."))
        and t.is_floating_point()
        and not t.isfinite().all()
    ]
    if bad:
        raise HandgradError(
            f"{weights}: {len(bad)} tensor(s) hold NaN/Inf (first {bad[0]}): the run had "
            "diverged when this was saved; use an earlier checkpoint, or train again with a "
            "lower --lr"
        )
    return Checkpoint(weights, info, tensors)


# ---------------------------------------------------------------------- a learner's state
def learner_tensors_and_info(learn: Learner) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Everything a resumed run needs, split into tensors and JSON."""
    tensors = {f"model.{k}": v for k, v in learn.model.state_dict().items()}
    opt_info: dict[str, Any] = {"class": type(learn.opt).__name__, "meta": {}}
    if hasattr(learn.opt, "state_dict"):
        opt_tensors, opt_meta = learn.opt.state_dict()
        tensors |= {f"optim.{k}": v for k, v in opt_tensors.items()}
        opt_info["meta"] = opt_meta
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    rng = {"torch_cpu": "rng.torch_cpu"}
    if learn.device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(learn.device)
        rng["torch_cuda"] = "rng.torch_cuda"
    cb_meta: dict[str, Any] = {}
    for cb in learn.callbacks:
        if cb.name and hasattr(cb, "state_dict"):
            cb_tensors, meta = cb.state_dict()
            tensors |= {f"callbacks.{cb.name}.{k}": v for k, v in cb_tensors.items()}
            cb_meta[cb.name] = meta
    metrics_cb = getattr(learn, "metrics", None)
    info = {
        "epoch": learn.epoch + 1,  # epochs completed: the next run starts at this index
        "step": learn.step,
        "n_epochs": learn.n_epochs,
        # FastLearner's compiled step agrees with the readable one only to rounding
        "fast": getattr(learn, "fast", None) is not None,
        "optimizer": opt_info,
        "loader": {
            "epoch": learn.epoch + 1,
            "batch": 0,
            "seed": getattr(learn.train_dl, "seed", None),
        },
        "rng": rng,
        "callbacks": cb_meta,
        "metrics": dict(getattr(metrics_cb, "values", {})),
        "versions": {"handgrad": __version__, "torch": torch.__version__},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return tensors, info


def save_learner(path: str | os.PathLike[str], learn: Learner, info: Mapping[str, Any]) -> Path:
    """Save ``learn`` at the end of its current epoch, with ``info`` (model, config, data)."""
    tensors, state = learner_tensors_and_info(learn)
    return save_checkpoint(path, tensors, dict(info) | state)


def restore_learner(learn: Learner, ckpt: Checkpoint) -> tuple[int, int]:
    """Load weights, optimizer, callback states and RNG state from ``ckpt`` into ``learn``.

    Returns ``(start_epoch, start_step)`` for ``learn.fit(n, start_epoch=..., start_step=...)``.
    A checkpoint that lacks a part of that state is a one-line error.
    """
    info = ckpt.info
    start = _count(ckpt, "epoch"), _count(ckpt, "step")
    fast = getattr(learn, "fast", None) is not None
    if info.get("fast", fast) != fast:
        how = "with --fast" if info["fast"] else "without --fast"
        raise HandgradError(
            f"{ckpt.path}: the run was trained {how}; resume it {how} too (the compiled and "
            "the readable step agree only to rounding, and a resumed run repeats its own)"
        )
    if "rng.torch_cpu" not in ckpt.tensors:
        raise HandgradError(f"{ckpt.path}: no random generator state (rng.torch_cpu); {_REDO}")
    load_weights(learn.model, ckpt)
    if hasattr(learn.opt, "load_state_dict"):
        opt_meta = info.get("optimizer", {})
        if opt_meta.get("class") != type(learn.opt).__name__:
            raise HandgradError(
                f"{ckpt.path}: saved with optimizer {opt_meta.get('class')}, resumed with "
                f"{type(learn.opt).__name__}; resume with the same --opt"
            )
        _load_part(ckpt, "optimizer", learn.opt, "optim", opt_meta.get("meta", {}))
    for cb in learn.callbacks:
        if cb.name and hasattr(cb, "load_state_dict") and cb.name in info.get("callbacks", {}):
            meta = info["callbacks"][cb.name]
            _load_part(ckpt, f"callback {cb.name}", cb, f"callbacks.{cb.name}", meta)
    torch.set_rng_state(ckpt.tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in ckpt.tensors and learn.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt.tensors["rng.torch_cuda"], learn.device)
    return start


_REDO = "it cannot be resumed: start the run again, or resume an intact last.safetensors"


def _count(ckpt: Checkpoint, key: str) -> int:
    """``info[key]``, a count of epochs or steps: a non-negative integer, else an error."""
    value = ckpt.info.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HandgradError(
            f"{ckpt.path}: {key!r} in the sidecar is {value!r}, not a count; {_REDO}"
        )
    return value


def _load_part(ckpt: Checkpoint, what: str, into: Any, prefix: str, meta: Any) -> None:
    """``into.load_state_dict`` with the checkpoint's ``prefix`` tensors; a mismatch (missing
    or extra tensors, bad metadata) is a one-line error."""
    try:
        into.load_state_dict(ckpt.group(prefix), meta)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HandgradError(
            f"{ckpt.path}: the {what} state does not fit ({detail}); {_REDO}"
        ) from exc


def load_weights(model: Any, ckpt: Checkpoint) -> None:
    """Copy the checkpoint's weights into ``model``; a mismatch is a one-line error."""
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as exc:
        raise HandgradError(f"{ckpt.path}: weights do not fit the model: {exc}") from exc
