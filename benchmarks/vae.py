"""V on this machine: training and encoding images/s, and peak memory against the store's size.

    python benchmarks/vae.py [--episodes 20 200] [--steps 150] [--threads 2]

Collects ``min(--episodes)`` brownian episodes of 100 steps with the fast backend, then makes
the larger stores by writing the same episodes again under new indices (cheap; fine for a
memory test). Every measurement runs in its own subprocess so that peak RSS
figures do not mix:

- train: ``train_vae`` for ``--steps`` steps of batch 100 (images/s: median of the logged
  windows after the first, data loading included);
- stream: one whole epoch of the frame stream alone, which touches every frame of the store,
  with plain reads (what training uses) and, for contrast, through the episodes' memory maps;
- encode: ``encode_store`` over the whole store, batch 1000, writes included.

Training runs in float32 (the baseline) and, on a CPU with native bfloat16 (AVX512-BF16 or AMX),
with channels_last and with bf16 + channels_last too (``vae.bf16``, ``vae.channels_last``);
measure at least ~150 steps: bf16's first ~50 steps ran ~1.6x float32's speed on this 2-core
CPU, later ones ~1.1x, so a short run overstates it. On CUDA (when available) training runs in
float32 and with bf16 + channels_last, and encoding too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS_PER_EPISODE = 100


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux: VmHWM, the high-water mark of this process image. ``ru_maxrss`` is not used there
    because it survives fork + exec: a child would report at least its parent's size at fork.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux units: KiB


# --- children: one measurement each ----------------------------------------------------------


def child_train(store: str, args) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from worldmodels.config import VAEConfig
    from worldmodels.vision.train import train_vae

    config = VAEConfig(
        max_steps=args.steps,
        batch_size=100,
        log_every=5,
        val_every=10**9,
        checkpoint_every=10**9,
        device=args.device,
        bf16=args.bf16,
        channels_last=args.channels_last,
    )
    with tempfile.TemporaryDirectory() as out:
        train_vae(store, out, config, progress=False)
        events = EventAccumulator(str(Path(out) / "tb")).Reload()
        rates = sorted(e.value for e in events.Scalars("perf/images_per_second")[1:])
    return {"images_per_second": rates[len(rates) // 2], "rss_mb": peak_rss_mb()}


def child_stream(store_path: str, args) -> dict:
    import torch

    from worldmodels.vision.data import FrameStream, open_frame_store, split_episodes

    class MmapStream(FrameStream):
        def load(self, steps, mirrored=None):  # the store holds no mirroring here
            return torch.from_numpy(self.store.get_frames(steps, "obs", mmap=True))

    store = open_frame_store(store_path)
    train, _ = split_episodes(store, 1)
    cls = MmapStream if args.mmap else FrameStream
    stream = cls(store, train, batch_size=100, seed=0)
    start, frames = time.perf_counter(), 0
    batches = stream.batches()
    for _ in range(stream.batches_per_epoch):
        batch = next(batches)
        frames += len(batch.frames)
    batches.close()
    return {"images_per_second": frames / (time.perf_counter() - start), "rss_mb": peak_rss_mb()}


def child_encode(store: str, args) -> dict:
    from worldmodels.vision.encode import encode_store

    with tempfile.TemporaryDirectory() as out:
        summary = encode_store(
            store, args.vae, Path(out) / "series", device=args.device, progress=False
        )
    return {"images_per_second": summary.images_per_second, "rss_mb": peak_rss_mb()}


CHILDREN = {"train": child_train, "stream": child_stream, "encode": child_encode}


def run_child(mode: str, store: Path, args, **options) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--store", str(store)]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    for key, value in options.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{mode} child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- stores ----------------------------------------------------------------------------------


def make_stores(root: Path, sizes: list[int]) -> dict[int, Path]:
    from worldmodels.config import CollectConfig
    from worldmodels.data.store import EpisodeStore, StoreWriter
    from worldmodels.envs import envpool_available
    from worldmodels.execution import collect

    backend = "envpool" if envpool_available() else "gymnasium"
    base = root / f"eps{min(sizes)}"
    config = CollectConfig(
        backend=backend, episodes=min(sizes), max_steps=STEPS_PER_EPISODE, num_envs=10
    )
    collect(config, str(base), progress=False)
    source = EpisodeStore(base)
    stores = {min(sizes): base}
    for n in sorted(set(sizes) - {min(sizes)}):
        identity = {**source.manifest["identity"], "replicated_to": n}
        writer = StoreWriter(root / f"eps{n}", "episodes", identity)
        for i in range(n):
            ep = source[i % len(source)]
            writer.add(i, ep.load(), ep.meta)
        stores[n] = writer.path
    return stores


def save_untrained_vae(path: Path) -> Path:
    from worldmodels.config import VAEConfig
    from worldmodels.vision.train import save_vae
    from worldmodels.vision.vae import ConvVAE

    return save_vae(ConvVAE(32), VAEConfig(), path)


# --- the table -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--steps", type=int, default=150, help="training steps per measurement")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vae", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    from worldmodels.utils.device import bf16_supported

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.store, args)))
        return

    cuda = torch.cuda.is_available()
    # float32 is the baseline; the speed options where this CPU has native bfloat16
    cpu_train_arms = [("fp32", {})]
    if bf16_supported(torch.device("cpu")):
        cpu_train_arms += [
            ("channels_last", {"channels_last": True}),
            ("bf16+channels_last", {"bf16": True, "channels_last": True}),
        ]
    started = time.perf_counter()
    print(
        f"V benchmark: torch {torch.__version__}, {args.threads} CPU threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; stores of "
        f"{' and '.join(map(str, args.episodes))} episodes x {STEPS_PER_EPISODE} steps"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = make_stores(Path(tmp), args.episodes)
        vae = save_untrained_vae(Path(tmp) / "vae.pt")
        for n, store in stores.items():
            label = f"{n} ep ({n * STEPS_PER_EPISODE // 1000}k frames)"
            for what, options in cpu_train_arms:
                result = run_child("train", store, args, **options)
                rows.append((f"train, batch 100, {what}", "cpu", label, result))
            rows.append(
                ("stream 1 epoch, plain reads", "-", label, run_child("stream", store, args))
            )
            rows.append(
                (
                    "stream 1 epoch, memory maps",
                    "-",
                    label,
                    run_child("stream", store, args, mmap=True),
                )
            )
            rows.append(
                ("encode, batch 1000", "cpu", label, run_child("encode", store, args, vae=vae))
            )
            if cuda:
                for bf16 in (False, True):
                    what = "train, batch 100" + (", bf16+channels_last" if bf16 else ", fp32")
                    result = run_child(
                        "train", store, args, device="cuda", bf16=bf16, channels_last=bf16
                    )
                    rows.append((what, "cuda", label, result))
                rows.append(
                    (
                        "encode, batch 1000",
                        "cuda",
                        label,
                        run_child("encode", store, args, vae=vae, device="cuda"),
                    )
                )

    print(f"{'measurement':<40} {'device':<6} {'store':<18} {'images/s':>9} {'peak RSS MB':>12}")
    for what, device, label, result in rows:
        print(
            f"{what:<40} {device:<6} {label:<18} {result['images_per_second']:>9.0f} "
            f"{result['rss_mb']:>12.0f}"
        )
    if not cuda:
        print("no CUDA device here: GPU rows skipped")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
