"""TorchX components for the ``umec`` stages: ``train``, ``compress``, ``finetune``.

Each wraps TorchX's builtin ``dist.ddp`` (one role, named after the stage, ``torchrun``
inside) around ``python -m umec_torchrec.cli <stage> ...``; everything after ``--`` goes to
the stage unchanged, so a component takes exactly the flags of ``umec <stage> --help``, and
the job flags of ``dist.ddp`` a cluster user needs (``--h`` named resources, ``--mounts``,
``--rdzv_backend``, ``--max_retries``, ``--env``, ``--debug``)::

    torchx run -s local_cwd torchx_components/umec.py:train -j 1x2 -- --data synthetic --out runs/base
    torchx run -s local_cwd torchx_components/umec.py:compress -j 1x2 -- \\
        --from runs/base --budget flops=0.3 --out runs/compressed
    torchx run -s local_cwd torchx_components/umec.py:finetune -j 1x2 -- --from runs/compressed --out runs/ft

``-j NODESxPROCS`` sets the job shape (default ``1x2``: one node, two ranks). On CPU the
ranks use gloo; with GPUs (``--gpu 1`` per rank) nccl. ``local_cwd`` runs in the current
environment and needs ``torchrun`` on ``PATH`` (activate the virtual environment).
Container schedulers (docker, kubernetes, ...) run :data:`IMAGE`, which must hold torch,
FBGEMM, TorchRec and this package: build it with the repository's ``Dockerfile``
(``docker build -t umec-torchrec:latest .``) and push it, or pass ``--image``. The
entry point ``umec_torchrec.cli`` records a failed rank's root cause in its TorchElastic
error file. The same commands run under plain torchrun:
``torchrun --nproc_per_node 2 -m umec_torchrec.cli compress ...``.
"""

from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

__all__ = ["train", "compress", "finetune", "MODULE", "IMAGE"]

MODULE = "umec_torchrec.cli"
#: the default image: torch + FBGEMM + TorchRec + umec-torchrec, built by the repository's Dockerfile
IMAGE = "umec-torchrec:latest"


def _stage(
    stage: str,
    script_args: tuple,
    j: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    env: Optional[Dict[str, str]],
    mounts: Optional[List[str]],
    max_retries: int,
    rdzv_port: int,
    rdzv_backend: str,
    debug: bool,
    name: Optional[str],
    image: str,
) -> specs.AppDef:
    """``dist.ddp`` over ``python -m umec_torchrec.cli <stage>``, its role named ``stage``."""
    if h and h not in specs.named_resources:
        try:
            specs.named_resources[h]
        except KeyError as e:
            raise ValueError(f"h={h!r}: {e.args[0] if e.args else 'not a registered TorchX named resource'}") \
                from None
    env = dict(env or {})
    if debug:
        env.setdefault("UMEC_DEBUG", "1")  # umec prints tracebacks of internal errors
    app = ddp(
        stage,
        *script_args,
        m=MODULE,
        name=name or f"umec-{stage}",
        image=image,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        rdzv_backend=rdzv_backend,
        mounts=mounts,
        debug=debug,
    )
    app.roles[0].name = stage
    return app


def train(
    *script_args: str,
    j: str = "1x2",
    h: Optional[str] = None,
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    debug: bool = False,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Train a DLRM and write a run directory (``umec train``).

    Args:
        script_args: flags of ``umec train`` (after ``--``), e.g. ``--data synthetic --out runs/base``.
        j: job shape ``[MIN_NODES:]NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        h: a registered TorchX named resource (e.g. ``aws_p4d.24xlarge``); takes precedence
            over ``cpu``, ``gpu`` and ``memMB``.
        cpu: CPUs per node.
        gpu: GPUs per node (0: CPU with gloo; with GPUs nccl, one rank per GPU).
        memMB: memory per node in MB.
        env: extra environment variables (e.g. ``LOGLEVEL=INFO,OMP_NUM_THREADS=4``).
        mounts: mounts into the container, e.g. ``type=bind,src=/data,dst=/data,readonly``
            (container schedulers; see the scheduler's documentation).
        max_retries: restarts of the job by the scheduler on failure.
        rdzv_port: rendezvous port on rank 0's host (multi-node jobs; single-node jobs pick a free one).
        rdzv_backend: torchrun's rendezvous backend (``c10d``, ``static``, ``etcd``; multi-node jobs).
        debug: set PyTorch's distributed debug variables and ``UMEC_DEBUG=1`` (tracebacks of
            internal errors).
        name: job name (default ``umec-train``).
        image: container image with torch, FBGEMM, TorchRec and this package (default
            ``umec-torchrec:latest``, built by the repository's ``Dockerfile``); container
            schedulers only, ``local_cwd`` runs in the current environment.
    """
    return _stage("train", script_args, j, h, cpu, gpu, memMB, env, mounts, max_retries, rdzv_port,
                  rdzv_backend, debug, name, image)


def compress(
    *script_args: str,
    j: str = "1x2",
    h: Optional[str] = None,
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    debug: bool = False,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Compress a trained run with UMEC under resource budgets (``umec compress``).

    Args:
        script_args: flags of ``umec compress`` (after ``--``), e.g.
            ``--from runs/base --budget flops=0.3 --out runs/compressed``.
        j: job shape ``[MIN_NODES:]NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        h: a registered TorchX named resource (e.g. ``aws_p4d.24xlarge``); takes precedence
            over ``cpu``, ``gpu`` and ``memMB``.
        cpu: CPUs per node.
        gpu: GPUs per node (0: CPU with gloo; with GPUs nccl, one rank per GPU).
        memMB: memory per node in MB.
        env: extra environment variables (e.g. ``LOGLEVEL=INFO,OMP_NUM_THREADS=4``).
        mounts: mounts into the container, e.g. ``type=bind,src=/data,dst=/data,readonly``
            (container schedulers; see the scheduler's documentation).
        max_retries: restarts of the job by the scheduler on failure.
        rdzv_port: rendezvous port on rank 0's host (multi-node jobs; single-node jobs pick a free one).
        rdzv_backend: torchrun's rendezvous backend (``c10d``, ``static``, ``etcd``; multi-node jobs).
        debug: set PyTorch's distributed debug variables and ``UMEC_DEBUG=1`` (tracebacks of
            internal errors).
        name: job name (default ``umec-compress``).
        image: container image with torch, FBGEMM, TorchRec and this package (default
            ``umec-torchrec:latest``, built by the repository's ``Dockerfile``); container
            schedulers only, ``local_cwd`` runs in the current environment.
    """
    return _stage("compress", script_args, j, h, cpu, gpu, memMB, env, mounts, max_retries, rdzv_port,
                  rdzv_backend, debug, name, image)


def finetune(
    *script_args: str,
    j: str = "1x2",
    h: Optional[str] = None,
    cpu: int = 1,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    debug: bool = False,
    name: Optional[str] = None,
    image: str = IMAGE,
) -> specs.AppDef:
    """Fine-tune a compressed run with its masks fixed (``umec finetune``).

    Args:
        script_args: flags of ``umec finetune`` (after ``--``), e.g.
            ``--from runs/compressed --out runs/finetuned``.
        j: job shape ``[MIN_NODES:]NODESxPROCS_PER_NODE`` (e.g. ``1x2``).
        h: a registered TorchX named resource (e.g. ``aws_p4d.24xlarge``); takes precedence
            over ``cpu``, ``gpu`` and ``memMB``.
        cpu: CPUs per node.
        gpu: GPUs per node (0: CPU with gloo; with GPUs nccl, one rank per GPU).
        memMB: memory per node in MB.
        env: extra environment variables (e.g. ``LOGLEVEL=INFO,OMP_NUM_THREADS=4``).
        mounts: mounts into the container, e.g. ``type=bind,src=/data,dst=/data,readonly``
            (container schedulers; see the scheduler's documentation).
        max_retries: restarts of the job by the scheduler on failure.
        rdzv_port: rendezvous port on rank 0's host (multi-node jobs; single-node jobs pick a free one).
        rdzv_backend: torchrun's rendezvous backend (``c10d``, ``static``, ``etcd``; multi-node jobs).
        debug: set PyTorch's distributed debug variables and ``UMEC_DEBUG=1`` (tracebacks of
            internal errors).
        name: job name (default ``umec-finetune``).
        image: container image with torch, FBGEMM, TorchRec and this package (default
            ``umec-torchrec:latest``, built by the repository's ``Dockerfile``); container
            schedulers only, ``local_cwd`` runs in the current environment.
    """
    return _stage("finetune", script_args, j, h, cpu, gpu, memMB, env, mounts, max_retries, rdzv_port,
                  rdzv_backend, debug, name, image)
