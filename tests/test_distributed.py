"""Data-parallel training on torch.distributed (gloo, 2 CPU workers): the same numbers as one process.

One pair of worker processes (``torch.multiprocessing.spawn``: starting workers costs seconds, so they are started
once) runs every check and saves what it computed; the test process computes the same things alone:

- two SGD steps of kd-hydra's training step (``StepForward`` in DistributedDataParallel, ``train_epoch``) on a
  BatchNorm zoo model (resnet8 <- resnet14) equal one process that runs each worker's rows of every batch as its
  own BatchNorm batch, weighs each loss by its share of the batch and averages the gradients: for every per-sample
  method, on an uneven last batch too; the batch-relational methods as declared (each worker's rows, or the
  whole batch with ``gather``);
- an evaluation sharded over the workers (101 images, uneven) counts exactly what one process counts;
- a soft-label cache entry filled by two workers has the same seal as one filled by one process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from kd_hydra.data.pipeline import InMemoryPipeline
from kd_hydra.data.types import ArrayData, DatasetSpec
from kd_hydra.models import build_model
from kd_hydra.stores.cache_entry import SEAL_FILE
from kd_hydra.stores.logit_cache import cache_description
from kd_hydra.stores.teacher_outputs import LiveTeacher
from kd_hydra.train.batches import BatchAssembler
from kd_hydra.train.distributed import SINGLE, Workers, join, leave
from kd_hydra.train.runtime import Runtime
from kd_hydra.train.schedules import constant_schedule
from kd_hydra.train.stages import training_stage
from kd_hydra.train.trainer import StepForward, evaluate, gathered_batch, train_epoch
from tests.method_helpers import set_up_like_the_trainer

RUNTIME = Runtime(torch.device("cpu"), None, False, False)
WORLD = 2
CLASSES, IMAGE_SHAPE = 5, (3, 16, 16)
#: Methods whose loss is a mean over samples (the gradient of two workers equals one process's).
PER_SAMPLE = ("kd", "dkd", "at", "fitnet", "vid", "nst", "kdsvd", "ab", "ft", "fsp", "ofd", "reviewkd", "crd")
#: Batch-relational methods, per worker (as the references) and gathered (``trainer.gather_batch``).
RELATIONAL = ("dist", "sp", "rkd", "pkt", "cc")
GATHERED = ("dist", "rkd", "sp")
#: Global batches of 12, 12 and an uneven last batch of 7 (4 + 3 rows).
BATCH_SIZES = (12, 12, 7)


def data() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out, start = [], 0
    for size in BATCH_SIZES:
        images = torch.randn(size, *IMAGE_SHAPE, generator=generator)
        targets = torch.randint(0, CLASSES, (size,), generator=generator)
        out.append((images, targets, torch.arange(start, start + size)))
        start += size
    return out


def setup(name: str, relational_sizes: bool = False):
    """Student, teacher, method, stage and batch assembler, the same in every process."""
    torch.manual_seed(1)
    student = build_model("resnet8", CLASSES, 3, 16)
    torch.manual_seed(2)
    teacher = build_model("resnet14", CLASSES, 3, 16).eval()
    targets = torch.cat([t for _, t, _ in data()])
    overrides = {"nce_k": 8} if name == "crd" else {}
    method, request = set_up_like_the_trainer(name, student, teacher, IMAGE_SHAPE, targets, CLASSES, **overrides)
    if name == "crd":  # Z estimated beforehand: a first-batch estimate differs between one and two workers
        method.memory.z_student.fill_(3.0)
        method.memory.z_teacher.fill_(3.0)
    source = LiveTeacher(teacher, RUNTIME, list(request.teacher), method.teacher_batch_statistics)
    assemble = BatchAssembler(student, RUNTIME, source, request.student)

    def sgd(groups):
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=5e-4)

    stage = training_stage("student", 1, student, method, sgd, constant_schedule, "optimizer.lr")
    return student, method, stage, assemble


def trained_parameters(student, method) -> dict[str, torch.Tensor]:
    named = {f"student.{k}": v for k, v in student.named_parameters()}
    named.update({f"method.{k}": v for k, v in method.named_parameters()})
    return {k: v.detach().clone() for k, v in named.items()}


def distributed_steps(name: str, workers: Workers, gather: bool = False) -> dict[str, torch.Tensor]:
    """kd-hydra's steps as one of ``workers``: its rows of each batch, DDP averaging the gradients."""
    student, method, stage, assemble = setup(name)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with stage.trainable():
        optimizer, _ = stage.build_optimizer()
        step = workers.data_parallel(StepForward(stage, assemble, workers, gather))
        for images, targets, indices in data():
            rows = workers.rows(len(targets))
            batch = [(images[rows], targets[rows], indices[rows])]
            train_epoch(stage, batch, step, optimizer, scaler, RUNTIME, [len(targets)], workers, gather)
    return trained_parameters(student, method)


def one_process_steps(name: str, gather: bool = False, weigh: bool = True) -> dict[str, torch.Tensor]:
    """The same steps in one process: each worker's rows forwarded as its own BatchNorm batch (from the same state
    of the method's buffers), the gradient of each share weighed by its size (unless not ``weigh``), the gradients
    averaged."""
    student, method, stage, assemble = setup(name)
    forward = StepForward(stage, assemble)
    params = [p for group in stage.parameter_groups for p in group]
    with stage.trainable():
        optimizer, _ = stage.build_optimizer()
        stage.set_modes()
        rng = torch.get_rng_state()
        for images, targets, indices in data():
            shares = [Workers(rank, WORLD).rows(len(targets)) for rank in range(WORLD)]
            before = {k: b.clone() for k, b in method.named_buffers()}
            after, grads = [], []
            if gather:  # the whole batch's loss over per-worker forwards
                batches = []
                for rows in shares:
                    torch.set_rng_state(rng)
                    batches.append(assemble(images[rows], targets[rows], indices[rows]))
                whole = _concatenated(batches)
                optimizer.zero_grad()
                stage.loss(whole).total.backward()
                grads = [[p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]]
                total = [sum(g) for g in zip(*grads)]
            else:
                for rows in shares:
                    torch.set_rng_state(rng)  # each worker draws from the same stream (CRD's negatives)
                    for key, buffer in method.named_buffers():
                        buffer.copy_(before[key])
                    output, _ = forward(images[rows], targets[rows], indices[rows])
                    optimizer.zero_grad()
                    weight = len(targets[rows]) * WORLD / len(targets) if weigh else 1.0
                    (output.total * weight).backward()
                    grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
                    after.append({k: b.clone() for k, b in method.named_buffers()})
                total = [sum(g / WORLD for g in share) for share in zip(*grads)]
                for key, buffer in method.named_buffers():  # disjoint rows updated by each share (CRD's memory)
                    merged = before[key]
                    for state in after:
                        merged = torch.where(state[key] != before[key], state[key], merged)
                    buffer.copy_(merged)
            rng = torch.get_rng_state()
            for p, g in zip(params, total):
                p.grad = g
            optimizer.step()
    return trained_parameters(student, method)


def _concatenated(batches):
    """One MethodBatch of per-worker batches, as ``gathered_batch`` builds it."""
    from kd_hydra.methods.base import MethodBatch

    def cat(values):
        first = values[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(values)
        if isinstance(first, dict):
            return {k: torch.cat([v[k] for v in values]) for k in first}
        return first

    fields = MethodBatch.__dataclass_fields__
    return MethodBatch(**{name: cat([getattr(b, name) for b in batches]) for name in fields})


def eval_data() -> ArrayData:
    generator = torch.Generator().manual_seed(3)
    x_train = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    x_test = torch.randint(0, 256, (101, 16, 16, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    y_train = torch.randint(0, CLASSES, (40,), generator=generator)
    y_test = torch.randint(0, CLASSES, (101,), generator=generator)
    classes = tuple(str(c) for c in range(CLASSES))
    spec = DatasetSpec("gen", CLASSES, 3, 16, classes, num_train=40, num_test=101)
    return ArrayData(x_train.contiguous(), y_train, x_test.contiguous(), y_test, spec)


def pipeline(workers: Workers) -> InMemoryPipeline:
    from kd_hydra.data.pipeline import AugmentConfig

    stats = ([0.5] * 3, [0.25] * 3)
    return InMemoryPipeline(eval_data(), AugmentConfig(), *stats, batch_size=12, device="cpu", seed=0,
                            eval_batch_size=16, workers=workers)  # fmt: skip


def evaluation(workers: Workers) -> tuple[float, float]:
    torch.manual_seed(4)
    model = build_model("resnet8", CLASSES, 3, 16)
    result = evaluate(model, pipeline(workers).test_batches(), RUNTIME, workers)
    return result.acc, result.top5


def cache_entry(root: Path, workers: Workers, top_k: int | None = None) -> bytes:
    """The seal of a soft-label cache entry whose first epoch ``workers`` filled: dense, or in top-k shards."""
    from kd_hydra.stores.logit_cache import CachedTeacher
    from kd_hydra.stores.sharded_logits import ShardedTeacher

    torch.manual_seed(5)
    teacher = build_model("resnet14", CLASSES, 3, 16)
    description = cache_description("sha", "content", {}, {}, 0, torch.float16, top_k, None, False)
    kind = CachedTeacher if top_k is None else ShardedTeacher
    cached = kind(root, description, teacher, pipeline(SINGLE), RUNTIME, CLASSES, torch.float16, top_k,
                  batch_size=8, max_bytes=1 << 30, workers=workers)  # fmt: skip
    cached.begin_epoch(0)
    workers.barrier()  # the leader has stored it
    return (cached.entry.path / SEAL_FILE).read_bytes()


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    workers = join("cpu")
    try:
        results = {f"steps/{name}": distributed_steps(name, workers) for name in (*PER_SAMPLE, *RELATIONAL)}
        results.update({f"gathered/{name}": distributed_steps(name, workers, gather=True) for name in GATHERED})
        results["evaluation"] = evaluation(workers)
        results["seal"] = cache_entry(Path(out) / "cache", workers)
        results["sharded_seal"] = cache_entry(Path(out) / "sharded", workers, top_k=3)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        leave(workers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread, as in the workers: the thread count changes float summation order (and FitNet's steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("workers")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    """Equal parameters: bit-identical unless ``atol`` (float rounding of another summation order) is given."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("name", PER_SAMPLE + RELATIONAL)
def test_two_workers_train_what_one_process_computes_from_their_shares(two_workers: list[dict], name: str):
    assert_same(two_workers[0][f"steps/{name}"], two_workers[1][f"steps/{name}"])  # the workers agree
    assert_same(two_workers[0][f"steps/{name}"], one_process_steps(name))


@pytest.mark.parametrize("name", GATHERED)
def test_gathered_batch_relational_losses_see_the_whole_batch(two_workers: list[dict], name: str):
    assert_same(two_workers[0][f"gathered/{name}"], two_workers[1][f"gathered/{name}"])
    assert_same(two_workers[0][f"gathered/{name}"], one_process_steps(name, gather=True))


def test_the_step_check_can_fail(two_workers: list[dict]):
    """Without the weights of the uneven last batch's shares (4 and 3 rows), one process differs from the workers;
    so does the whole batch's loss for a batch-relational method."""
    with pytest.raises(AssertionError):
        assert_same(two_workers[0]["steps/kd"], one_process_steps("kd", weigh=False))
    with pytest.raises(AssertionError):
        assert_same(two_workers[0]["steps/dist"], one_process_steps("dist", gather=True))


def test_an_uneven_sharded_evaluation_counts_exactly(two_workers: list[dict]):
    assert two_workers[0]["evaluation"] == two_workers[1]["evaluation"] == evaluation(SINGLE)


def test_a_cache_entry_filled_by_two_workers_is_sealed_like_one_process(two_workers: list[dict], tmp_path: Path):
    assert two_workers[0]["seal"] == cache_entry(tmp_path / "cache", SINGLE)
    assert two_workers[0]["sharded_seal"] == cache_entry(tmp_path / "sharded", SINGLE, top_k=3)  # top-k shards


def test_rows_split_a_batch_in_order_and_cover_it():
    for count in (1, 7, 12):
        rows = [Workers(rank, 3).rows(count) for rank in range(3)]
        assert [i for r in rows for i in range(count)[r]] == list(range(count))
        assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1


def test_gathered_batch_is_the_batch_itself_in_one_process():
    from kd_hydra.methods.base import MethodBatch

    batch = MethodBatch(torch.ones(2, 3), torch.zeros(2, dtype=torch.long), torch.arange(2))
    assert torch.equal(gathered_batch(batch, SINGLE).student_logits, batch.student_logits)


def test_jobs_started_at_once_spread_over_the_visible_gpus():
    from kd_hydra.train.runtime import spread_over_gpus

    cuda = torch.device("cuda")
    assert [spread_over_gpus(cuda, job, 4).index for job in range(6)] == [0, 1, 2, 3, 0, 1]
    assert spread_over_gpus(torch.device("cuda", 2), 5, 4) == torch.device("cuda", 2)  # an explicit GPU stays
    assert spread_over_gpus(torch.device("cpu"), 5, 4) == torch.device("cpu")
    assert spread_over_gpus(cuda, 5, 1) == cuda


def test_slurm_tasks_of_one_job_become_its_workers(monkeypatch: pytest.MonkeyPatch):
    """Under submitit with several tasks, submitit's own helper exports torch.distributed's environment."""
    import submitit.helpers

    from kd_hydra.run import workers

    exported = []

    class Environment:
        def export(self, set_cuda_visible_devices: bool = True) -> None:
            exported.append(set_cuda_visible_devices)

    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment", Environment)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    workers.join_cluster_tasks()
    assert exported == []  # one task: one process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    workers.join_cluster_tasks()
    assert exported == [False]  # every task keeps its GPUs visible: a worker picks cuda:LOCAL_RANK
