"""Neural posterior estimation with sbi: build, train and wrap density estimators.

The estimator is sbi's ``posterior_nn`` (NSF by default; MAF or MDN) behind an embedding of x
(an MLP by default), built only through :func:`build_estimator` from an
:class:`~cocasbi.inference.config.EstimatorConfig`: the allow-list of what a checkpoint may
rebuild. Training is sbi's NPE trainer with its early stopping (``stop_after_epochs``), with
two seeds of the seed tree:

* the train / validation split of round j from ``stream_seed(master, Stream.VALIDATION, j)``
  (numpy permutation, the same for every member of an ensemble);
* network initialisation and minibatch order of member m from
  ``stream_seed(master, Stream.TRAINING, m)`` (torch, inside a forked RNG state, so the
  caller's global torch state is untouched).

z-scoring of θ and x uses the statistics of the training split (sbi's ``independent``
option); they are stored in the network's state dict and, readable, in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from cocasbi.inference.config import EstimatorConfig, TrainingConfig
from cocasbi.inference.data import TrainingData
from cocasbi.seeds import Stream, stream_seed


@contextmanager
def torch_threads(threads: int):
    """Run torch's intra-op pool with ``threads`` threads (0 = leave as is), then restore it.

    One thread is the default of training: the networks are small, and on a busy machine a
    second thread made each minibatch ~10x slower (spinning on a shared core)."""
    import torch

    old = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def torch_seed(seq: np.random.SeedSequence) -> int:
    """A torch seed (int in [0, 2^63)) from a SeedSequence."""
    return int(seq.generate_state(1, dtype=np.uint64)[0] % np.uint64(2**63))


def zscore_stats(theta, x) -> dict:
    """Mean and (unbiased) std of θ and x over a training split, as sbi computes them."""
    return {"theta_mean": theta.mean(0).tolist(), "theta_std": theta.std(0).tolist(),
            "x_mean": x.mean(0).tolist(), "x_std": x.std(0).tolist()}


def build_estimator(cfg: EstimatorConfig, theta, x):
    """The untrained density estimator q(θ | x) for ``cfg``, z-scored on (θ, x) (torch)."""
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import FCEmbedding
    from torch import nn

    n_x = int(x.shape[1])
    if cfg.embedding == "mlp":
        embedding = FCEmbedding(n_x, output_dim=cfg.embedding_features,
                                num_layers=cfg.embedding_layers,
                                num_hiddens=cfg.embedding_hidden)
    elif cfg.embedding == "none":
        embedding = nn.Identity()
    else:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(f"unknown embedding {cfg.embedding!r}")
    if cfg.model not in ("nsf", "maf", "mdn"):  # pragma: no cover - Literal forbids it
        raise ValueError(f"unknown density estimator {cfg.model!r}")
    z = "independent" if cfg.z_score else "none"
    builder = posterior_nn(model=cfg.model, z_score_theta=z, z_score_x=z,
                           hidden_features=cfg.hidden_features,
                           num_transforms=cfg.num_transforms, num_bins=cfg.num_bins,
                           num_components=cfg.num_components, embedding_net=embedding)
    return builder(theta, x)


def rebuild_estimator(cfg: EstimatorConfig, zscore: dict, state_dict):
    """An estimator of ``cfg`` with the weights (and z-score buffers) of ``state_dict``.

    It is built on a two-row batch with the stored mean and std (so its z-scoring equals the
    trained one even before the state dict is loaded), then loaded strictly.
    """
    import torch

    def two_rows(mean, std):
        mean = torch.as_tensor(mean, dtype=torch.float32)
        half = torch.as_tensor(std, dtype=torch.float32) / np.sqrt(2.0)
        return torch.stack([mean - half, mean + half])

    net = build_estimator(cfg, two_rows(zscore["theta_mean"], zscore["theta_std"]),
                          two_rows(zscore["x_mean"], zscore["x_std"]))
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    return net


class _NoTracker:
    """sbi's training tracker that records nothing (sbi's default writes TensorBoard files into
    ``./sbi-logs`` of whatever directory the user is in; the training summary we keep is the
    estimator's own ``summary``)."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def _seeded_npe_class():
    from sbi.inference import NPE

    class SeededNPE(NPE):
        """sbi's NPE whose train / validation split comes from a numpy Generator and whose
        epochs advance a tqdm bar."""

        split_rng: np.random.Generator | None = None
        bar = None

        def get_dataloaders(self, starting_round=0, training_batch_size=200,
                            validation_fraction=0.1, resume_training=False,
                            dataloader_kwargs=None):
            import torch

            if not resume_training:
                n = int(self.get_simulations(starting_round)[0].shape[0])
                n_train = int((1 - validation_fraction) * n)
                perm = torch.as_tensor(self.split_rng.permutation(n), dtype=torch.int64)
                self.train_indices, self.val_indices = perm[:n_train], perm[n_train:]
            return super().get_dataloaders(starting_round, training_batch_size,
                                           validation_fraction, True, dataloader_kwargs)

        def _report_convergence_at_end(self, epoch, max_num_epochs):
            if epoch > max_num_epochs:  # sbi warns; a converged run is said by the caller
                super()._report_convergence_at_end(epoch, max_num_epochs)

        def _maybe_show_progress(self, show, epoch):
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(val_loss=f"{self._val_loss:.3f}",
                                     best=f"{self._best_val_loss:.3f}")

    return SeededNPE


@dataclass
class TrainedEstimator:
    """One trained member: its network, z-score statistics and training summary."""

    net: object
    zscore: dict
    summary: dict = field(default_factory=dict)


def split_indices(n: int, validation_fraction: float, master_seed: int, round_: int):
    """(train, validation) positions of the split of round ``round_`` (numpy int64)."""
    perm = np.random.default_rng(stream_seed(master_seed, Stream.VALIDATION, round_)
                                 ).permutation(n)
    n_train = int((1 - validation_fraction) * n)
    return perm[:n_train], perm[n_train:]


def train_estimators(data: TrainingData, estimator: EstimatorConfig, training: TrainingConfig,
                     master_seed: int, round_: int = 0, progress: bool = True,
                     members: Sequence[int] | None = None, rounds: Sequence = ()
                     ) -> list[TrainedEstimator]:
    """Train ``training.ensemble`` estimators (members 0..M−1) on ``data`` (prior draws).

    ``rounds``: further ``(TrainingData, proposal)`` pairs of sequential rounds, θ drawn from
    ``proposal`` (a posterior given x_o); sbi's NPE-C loss then corrects for the proposal.
    The split of all rows together comes from the VALIDATION stream of ``round_``.
    """
    import torch

    if len(data) < training.min_simulations:
        raise ValueError(f"only {len(data)} usable simulations, need at least "
                         f"{training.min_simulations} ({data.report})")
    for extra, _ in rounds:
        if extra.names != data.names or extra.parameters != data.parameters:
            raise ValueError("simulations of a sequential round have another layout")
    theta = torch.cat([data.theta, *[d.theta for d, _ in rounds]])
    x = torch.cat([data.x, *[d.x for d, _ in rounds]])
    n = int(theta.shape[0])
    n_val = n - int((1 - training.validation_fraction) * n)
    if n_val < 1 or n - n_val < 2:
        raise ValueError(f"{n} simulations cannot be split with validation fraction "
                         f"{training.validation_fraction}")
    train_rows, _ = split_indices(n, training.validation_fraction, master_seed, round_)
    zscore = zscore_stats(theta[train_rows], x[train_rows])
    prior = data.prior.to_sbi()
    members = range(training.ensemble) if members is None else members
    cls = _seeded_npe_class()
    out = []
    for m in members:
        bar = tqdm(total=training.max_epochs, unit="epoch", desc=f"NPE member {m}",
                   disable=not progress, dynamic_ncols=True, leave=False)
        with torch_threads(training.threads), torch.random.fork_rng(), bar:
            torch.manual_seed(torch_seed(stream_seed(master_seed, Stream.TRAINING, m)))
            npe = cls(prior=prior, density_estimator=lambda th, xx: build_estimator(
                estimator, th, xx), show_progress_bars=False, tracker=_NoTracker())
            npe.split_rng = np.random.default_rng(
                stream_seed(master_seed, Stream.VALIDATION, round_))
            npe.bar = bar
            npe.append_simulations(data.theta, data.x, exclude_invalid_x=False)
            for extra, proposal in rounds:
                npe.append_simulations(extra.theta, extra.x, proposal=proposal,
                                       exclude_invalid_x=False)
            net = npe.train(training_batch_size=min(training.batch_size, len(train_rows)),
                            learning_rate=training.learning_rate,
                            validation_fraction=training.validation_fraction,
                            stop_after_epochs=training.stop_after_epochs,
                            max_num_epochs=training.max_epochs,
                            clip_max_norm=training.clip_max_norm)
        net.eval()
        s = npe.summary
        out.append(TrainedEstimator(net, zscore, {
            "member": m, "round": round_, "epochs": int(s["epochs_trained"][-1]),
            "best_validation_loss": float(s["best_validation_loss"][-1]),
            "n_train": len(train_rows), "n_validation": n - len(train_rows)}))
    return out


def make_posterior(nets, prior):
    """sbi posterior of trained networks: a ``DirectPosterior``, or an ``EnsemblePosterior``
    of equally weighted ones. Samples outside the prior box are rejected."""
    from sbi.inference import DirectPosterior
    from sbi.inference.posteriors import EnsemblePosterior

    posts = [DirectPosterior(posterior_estimator=n, prior=prior) for n in nets]
    return posts[0] if len(posts) == 1 else EnsemblePosterior(posts)
