"""TorchX components for the ``umec`` stages: ``train``, ``compress``, ``finetune``.

Each wraps TorchX's builtin ``dist.ddp`` (one role, ``torchrun`` inside) around
``python -m umec_torchrec.cli <stage> ...``; everything after ``--`` goes to the stage
unchanged, so a component takes exactly the flags of ``umec <stage> --help``::

    torchx run -s local_cwd torchx_components/umec.py:train -j 1x2 -- --data synthetic --out runs/base
    torchx run -s local_cwd torchx_components/umec.py:compress -j 1x2 -- \\
        --from runs/base --budget flops=0.3 --out runs/compressed
    torchx run -s local_cwd torchx_components/umec.py:finetune -j 1x2 -- --from runs/compressed --out runs/ft

``-j NODESxPROCS`` sets the job shape (default ``1x2``: one node, two ranks). On CPU the
ranks use gloo; with GPUs (``--gpu 1`` per rank) nccl. ``local_cwd`` needs ``torchrun`` on
``PATH`` (activate the virtual environment). The same commands run under plain torchrun:
``torchrun --nproc_per_node 2 -m umec_torchrec.cli compress ...``.
"""


from typing import Dict, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

__all__ = ["train", "compress", "finetune", "MODULE"]

MODULE = "umec_torchrec.cli"
IMAGE = "ghcr.io/pytorch/torchx:0.7.0"  # used only by container schedulers, not local_cwd


def _stage(
    stage: str,
    script_args: tuple,
    j: str,
    cpu: int,
    gpu: int,
    memMB: int,
    env: Optional[Dict[str, str]],
    max_retries: int,
    rdzv_port: int,
    name: Optional[str],
    image: str,
) -> specs.AppDef:
    return ddp(
        stage,
        *script_args,
        m=MODULE,
        name=name or f"umec-{stage}",
        image=image,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )


def train(
    *script_args: str,
    j: str = "1x2",
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Train a DLRM and write a run directory (``umec train``).

    Args:
        script_args: flags of ``umec train`` (after ``--``), e.g. ``--data synthetic --out runs/base``.
        j: job shape ``NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        cpu: CPUs per rank.
        gpu: GPUs per rank (0: CPU with gloo; 1: one GPU per rank with nccl).
        memMB: memory per rank in MB.
        env: extra environment variables.
        max_retries: restarts of the job on failure.
        rdzv_port: rendezvous port (multi-node jobs; single-node jobs pick a free one).
        name: job name (default ``umec-train``).
        image: container image (container schedulers only).
    """
    return _stage("train", script_args, j, cpu, gpu, memMB, env, max_retries, rdzv_port, name, image)


def compress(
    *script_args: str,
    j: str = "1x2",
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Compress a trained run with UMEC under resource budgets (``umec compress``).

    Args:
        script_args: flags of ``umec compress`` (after ``--``), e.g.
            ``--from runs/base --budget flops=0.3 --out runs/compressed``.
        j: job shape ``NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        cpu: CPUs per rank.
        gpu: GPUs per rank (0: CPU with gloo; 1: one GPU per rank with nccl).
        memMB: memory per rank in MB.
        env: extra environment variables.
        max_retries: restarts of the job on failure.
        rdzv_port: rendezvous port (multi-node jobs; single-node jobs pick a free one).
        name: job name (default ``umec-compress``).
        image: container image (container schedulers only).
    """
    return _stage("compress", script_args, j, cpu, gpu, memMB, env, max_retries, rdzv_port, name, image)


def finetune(
    *script_args: str,
    j: str = "1x2",
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Fine-tune a compressed run with its masks fixed (``umec finetune``).

    Args:
        script_args: flags of ``umec finetune`` (after ``--``), e.g.
            ``--from runs/compressed --out runs/finetuned``.
        j: job shape ``NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        cpu: CPUs per rank.
        gpu: GPUs per rank (0: CPU with gloo; 1: one GPU per rank with nccl).
        memMB: memory per rank in MB.
        env: extra environment variables.
        max_retries: restarts of the job on failure.
        rdzv_port: rendezvous port (multi-node jobs; single-node jobs pick a free one).
        name: job name (default ``umec-finetune``).
        image: container image (container schedulers only).
    """
    return _stage("finetune", script_args, j, cpu, gpu, memMB, env, max_retries, rdzv_port, name, image)
