"""Accuracy and time to accuracy of the ``resnet`` recipe: handgrad against ``torch.nn`` +
autograd training the same architecture with the same recipe, in one process.

    # the full runs of issue 18 (long: about 10 x 2-3 minutes per seed and framework on 2 cores)
    PYTHONPATH=src python benchmarks/resnet_accuracy.py fashion-mnist --seeds 0 1 2
    PYTHONPATH=src python benchmarks/resnet_accuracy.py mnist-sample --seeds 0 1 2
    # a sanity run (seconds)
    PYTHONPATH=src python benchmarks/resnet_accuracy.py fashion-mnist --limit 2000 --epochs 1

For each seed, the handgrad model is built (``build_model("resnet")``) and its twins are made
by ``handgrad.interop.torch.to_torch``: the same initial weights; ``torch`` as ``torch.nn``
runs it by default (NCHW), ``torch_cl`` moved to channels-last memory
(``.to(memory_format=torch.channels_last)``, faster on CPUs, as handgrad's recipe computes).
All train on the same batches:
the recipe's augmentation (:func:`handgrad.data.augment.augment_batch`: crops, flips where the
data allows them, random erasing; seeded per epoch as the ``Augment`` callback does) is drawn
once per batch and given to both, and their steps alternate, each timed alone (process-wide
wall clock, ``time.perf_counter``), so machine load hurts both alike. The recipe (AdamW with
decoupled weight decay, one-cycle, label smoothing; :data:`handgrad.train.recipes.RECIPES`)
is the same on both sides: ``torch.optim.AdamW`` with the learning rate set at every step from
handgrad's ``OneCycle``.

After each epoch: the validation accuracy of both (hyper-parameters are chosen on it only);
at the end, the test accuracy plain and with TTA (softmax averaged over each image and its
mirror image; Fashion-MNIST only). "Time to accuracy" is the training time each side needed
to first reach the lower of the two final validation accuracies.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from handgrad.data import DataLoader, load_dataset
from handgrad.data.augment import augment_batch, flips_allowed
from handgrad.interop.torch import to_torch
from handgrad.nn.layers.losses import CrossEntropyLoss
from handgrad.nn.models import build_model
from handgrad.optim.optimizers import AdamW
from handgrad.optim.schedules import OneCycle
from handgrad.train.inference import flip_rows
from handgrad.train.recipes import recipe_for

Predict = Callable[[Tensor], Tensor]
Stepper = Callable[[Tensor, Tensor, float], None]


def accuracy(predict: Predict, x: Tensor, y: Tensor, shape: tuple[int, ...], tta: bool) -> float:
    """Accuracy of ``predict`` (normalised rows -> logits); with ``tta``, of the softmax
    averaged over each image and its mirror image."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            xb = x[i : i + 1000]
            probs = torch.softmax(predict(xb).double(), 1)
            if tta:
                probs = (probs + torch.softmax(predict(flip_rows(xb, shape)).double(), 1)) / 2
            correct += int((probs.argmax(1) == y[i : i + 1000]).sum())
    return correct / max(len(x), 1)


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first cumulative training time whose validation accuracy reaches ``target``."""
    return next((t for t, acc in curve if acc >= target), None)


def run_seed(args: argparse.Namespace, ds, seed: int) -> dict[str, dict[str, object]]:
    recipe = recipe_for("resnet")
    epochs, bs, lr = args.epochs or recipe.epochs, args.bs or recipe.bs, args.lr or recipe.lr
    flip = recipe.flip and flips_allowed(ds.classes)
    train_x, train_y = ds.train.x[: args.limit], ds.train.y[: args.limit]
    mean, std = train_x.mean().item(), train_x.std().item()
    loader = DataLoader(train_x, train_y, bs, shuffle=True, seed=seed, drop_last=True,
                        mean=mean, std=std)  # fmt: skip
    torch.manual_seed(seed)
    model = build_model("resnet", generator=torch.Generator().manual_seed(seed))
    # torch.nn's default memory layout (NCHW), and channels-last (as the bridge gives it for
    # handgrad's channels-last recipe, and as a user who knows the CPU trick would run it)
    twin = to_torch(model).train().to(memory_format=torch.contiguous_format)
    twin_cl = to_torch(model).train().to(memory_format=torch.channels_last)
    steps = epochs * len(loader)
    schedule = OneCycle(lr, steps)
    hg_loss = CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    hg_opt = AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    t_loss = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    t_opt = torch.optim.AdamW(twin.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    cl_opt = torch.optim.AdamW(twin_cl.parameters(), lr=lr, weight_decay=recipe.weight_decay)

    def hg_step(xb: Tensor, yb: Tensor, rate: float) -> None:
        hg_opt.lr = rate
        hg_loss(model(xb), yb)
        dlogits, _ = hg_loss.backward()
        model.backward(dlogits, need_input_grad=False)
        hg_opt.step()
        hg_opt.zero_grad()

    def torch_stepper(net: torch.nn.Module, opt: torch.optim.Optimizer) -> Stepper:
        def step(xb: Tensor, yb: Tensor, rate: float) -> None:
            for group in opt.param_groups:
                group["lr"] = rate
            t_loss(net(xb), yb).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    nets = {"handgrad": model, "torch": twin, "torch_cl": twin_cl}
    steppers = {
        "handgrad": hg_step,
        "torch": torch_stepper(twin, t_opt),
        "torch_cl": torch_stepper(twin_cl, cl_opt),
    }
    if args.no_torch:
        del steppers["torch"], steppers["torch_cl"]
    sides: dict[str, dict[str, object]] = {name: {} for name in steppers}
    clock = dict.fromkeys(sides, 0.0)
    curves: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    vx, vy = (ds.valid.x - mean) / std, ds.valid.y
    shape = ds.image_shape
    step = 0
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)  # as Augment does
        for xb, yb in loader:
            start = time.perf_counter()
            xb = augment_batch(xb, shift=recipe.shift, flip=flip, erase=recipe.erase,
                               image_shape=shape, fill=-mean / std, generator=gen)  # fmt: skip
            shared = time.perf_counter() - start  # the augmentation counts for both sides
            order = list(steppers) if step % 2 == 0 else list(reversed(steppers))
            for name in order:  # alternating which side goes first
                start = time.perf_counter()
                steppers[name](xb, yb, schedule(step))
                clock[name] += time.perf_counter() - start + shared
            step += 1
        line = f"  seed {seed} epoch {epoch + 1}/{epochs}:"
        for name in sides:
            net = nets[name]
            net.eval()
            acc = accuracy(net, vx, vy, shape, tta=False)
            net.train()
            curves[name].append((clock[name], acc))
            line += f" {name} valid {acc:.4f} ({clock[name]:.0f} s)"
        print(line, flush=True)
    test = ds.test or ds.valid
    tx, ty = (test.x - mean) / std, test.y
    for name, side in sides.items():
        net = nets[name]
        net.eval()
        side["valid"] = curves[name][-1][1]
        side["test"] = accuracy(net, tx, ty, shape, tta=False)
        side["test_tta"] = accuracy(net, tx, ty, shape, tta=True) if flip else None
        side["seconds"] = clock[name]
        side["curve"] = curves[name]
    return sides


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default="fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--bs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--limit", type=int, default=None, help="train on the first N rows only")
    p.add_argument("--threads", type=int, default=0, help="default: torch's choice")
    p.add_argument("--no-torch", action="store_true", help="handgrad only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, progress=False)
    recipe = recipe_for("resnet")
    print(f"{ds.name}: {len(ds.train.x[: args.limit]):,} train rows, resnet recipe {recipe}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)  # fmt: skip
    results = [run_seed(args, ds, seed) for seed in args.seeds]
    test_name = "test" if ds.test is not None else "valid (no test split)"
    for name in results[0]:
        rows = [r[name] for r in results]
        tta = [r["test_tta"] for r in rows if r["test_tta"] is not None]
        print(f"{name}: valid {spread([r['valid'] for r in rows])}, {test_name} "
              f"{spread([r['test'] for r in rows])}"
              + (f", with TTA {spread(tta)}" if tta else "")
              + f"; training {spread([r['seconds'] for r in rows])} s")  # fmt: skip
    for peer in ("torch", "torch_cl"):
        if peer not in results[0]:
            continue
        for seed, r in zip(args.seeds, results, strict=True):
            target = min(r["handgrad"]["valid"], r[peer]["valid"])
            t_hg = time_to(r["handgrad"]["curve"], target)
            t_peer = time_to(r[peer]["curve"], target)
            ratio = f", {peer}/handgrad {t_peer / t_hg:.2f}x" if t_hg and t_peer else ""
            print(f"seed {seed}: time to valid {target:.4f}: handgrad {t_hg:.0f} s, {peer} "
                  f"{t_peer:.0f} s{ratio}")  # fmt: skip


if __name__ == "__main__":
    main()
