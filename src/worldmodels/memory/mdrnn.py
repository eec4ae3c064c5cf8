"""M: the MDN-RNN (an LSTM followed by a mixture-density head).

Given the latent code ``z_t`` of the current frame and the action ``a_t`` (and, for
Doom, a restart flag), the LSTM predicts a mixture of ``K`` diagonal Gaussians for
every dimension of ``z_{t+1}``, optionally a reward and a done logit.

Conventions
-----------
* **Batch-first everywhere**: sequences are ``(B, T, ...)``; the LSTM is built with
  ``batch_first=True``. The recurrent state is PyTorch's ``(h, c)``, each
  ``(1, B, H)`` (one layer). Never ``.view`` a batch-first tensor into time-first.
* Forget-gate bias: PyTorch's gate order is ``(i, f, g, o)``; ``bias_ih`` has 1.0
  on the forget slice and every other bias entry is 0, so ``bias_ih + bias_hh`` is
  1.0 on the forget gate (TF's default ``forget_bias=1.0``) and 0 elsewhere.
  Weights keep PyTorch's default uniform init.
* Output head: one ``Linear(H, z * K * 3 [+1 reward] [+1 done])``. The first
  ``z * K * 3`` outputs are laid out per latent dimension as ``[log_pi | mu |
  log_sigma]`` blocks of ``K`` (as the original TF code splits them).
  ``log_pi`` is a log-softmax over ``K``; ``log_sigma`` is clamped to
  ``[LOG_SIGMA_MIN, LOG_SIGMA_MAX] = [-7, 3]`` (sigma in ~[9e-4, 20]) so that the
  likelihood cannot run away to ``-inf`` (an old port's losses diverged to -1e22).
* Parameters at the CarRacing defaults: **423,392** (PyTorch keeps two LSTM bias
  vectors); the paper/TF count with one bias vector is **422,368**
  (:func:`paper_parameter_count`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_SIGMA_MIN = -7.0
LOG_SIGMA_MAX = 3.0
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

State = tuple[Tensor, Tensor]


@dataclass
class MDNOutput:
    """Mixture parameters for ``z_{t+1}``.

    Shapes are ``(B, T, z, K)`` from :meth:`MDNRNN.forward` and ``(B, z, K)`` (time
    squeezed) from :meth:`MDNRNN.step`; ``reward`` / ``done_logit`` are ``(B, T)`` or
    ``(B,)`` accordingly, or ``None`` when the model has no such head.
    """

    log_pi: Tensor
    mu: Tensor
    log_sigma: Tensor
    reward: Tensor | None = None
    done_logit: Tensor | None = None

    def select_time(self, t: int) -> MDNOutput:
        """The output at time index ``t`` of a ``(B, T, ...)`` output, time squeezed."""
        return MDNOutput(
            log_pi=self.log_pi[:, t],
            mu=self.mu[:, t],
            log_sigma=self.log_sigma[:, t],
            reward=None if self.reward is None else self.reward[:, t],
            done_logit=None if self.done_logit is None else self.done_logit[:, t],
        )


@dataclass
class SampledSequence:
    """Result of :meth:`MDNRNN.sample_sequence`.

    ``z[:, t]`` is the sample of ``z_{t+1}`` after taking ``actions[:, t]``;
    ``done_prob`` / ``reward`` are the predictions made at the same step (``(B, T)``)
    or ``None``; ``state`` is the LSTM state after the last step.
    """

    z: Tensor
    done_prob: Tensor | None
    reward: Tensor | None
    state: State


class MDNRNN(nn.Module):
    """LSTM + mixture density network (the "M" of World Models). Batch-first.

    Input per step: ``[z (z_size), action (action_size), extra (extra_inputs)]``;
    the Doom model uses ``extra_inputs=1`` for the restart flag.
    """

    def __init__(
        self,
        z_size: int = 32,
        action_size: int = 3,
        hidden_size: int = 256,
        num_gaussians: int = 5,
        reward_head: bool = False,
        done_head: bool = False,
        extra_inputs: int = 0,
    ) -> None:
        super().__init__()
        if min(z_size, hidden_size, num_gaussians) <= 0 or min(action_size, extra_inputs) < 0:
            raise ValueError("sizes must be positive (action_size, extra_inputs >= 0)")
        self.z_size = z_size
        self.action_size = action_size
        self.hidden_size = hidden_size
        self.num_gaussians = num_gaussians
        self.reward_head = reward_head
        self.done_head = done_head
        self.extra_inputs = extra_inputs
        self.input_size = z_size + action_size + extra_inputs

        self.lstm = nn.LSTM(self.input_size, hidden_size, num_layers=1, batch_first=True)
        self.n_mixture_outputs = z_size * num_gaussians * 3
        n_out = self.n_mixture_outputs + int(reward_head) + int(done_head)
        self.head = nn.Linear(hidden_size, n_out)
        self.reset_lstm_biases()

    def reset_lstm_biases(self) -> None:
        """All LSTM biases 0 except ``bias_ih`` on the forget gate (1.0): sum 1.0."""
        h = self.hidden_size
        with torch.no_grad():
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_hh_l0.zero_()
            self.lstm.bias_ih_l0[h : 2 * h].fill_(1.0)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero ``(h, c)``, each ``(1, batch_size, hidden_size)``."""
        p = self.head.weight
        device = p.device if device is None else device
        shape = (1, batch_size, self.hidden_size)
        return (
            torch.zeros(shape, device=device, dtype=p.dtype),
            torch.zeros(shape, device=device, dtype=p.dtype),
        )

    # ---------------------------------------------------------------- forward
    def _inputs(self, z: Tensor, actions: Tensor, extra: Tensor | None) -> Tensor:
        if z.shape[-1] != self.z_size or actions.shape[-1] != self.action_size:
            raise ValueError(
                f"expected z (..., {self.z_size}) and actions (..., {self.action_size}), "
                f"got {tuple(z.shape)} and {tuple(actions.shape)}"
            )
        dtype = self.head.weight.dtype
        parts = [z.to(dtype), actions.to(dtype)]
        if self.extra_inputs:
            if extra is None:
                raise ValueError(f"this model needs extra inputs ({self.extra_inputs})")
            if extra.dim() == z.dim() - 1:  # a flag without its trailing feature axis
                extra = extra.unsqueeze(-1)
            if extra.shape[-1] != self.extra_inputs:
                raise ValueError(f"extra must end in {self.extra_inputs}, got {extra.shape}")
            parts.append(extra.to(dtype))
        elif extra is not None and extra.numel() > 0:
            raise ValueError("extra given but the model was built with extra_inputs=0")
        return torch.cat(parts, dim=-1)

    def _split(self, y: Tensor) -> MDNOutput:
        """Head output ``(..., n_out)`` -> :class:`MDNOutput` with shapes ``(..., z, K)``."""
        lead = y.shape[:-1]
        k = self.num_gaussians
        mix = y[..., : self.n_mixture_outputs].reshape(*lead, self.z_size, 3 * k)
        logit_pi, mu, log_sigma = mix.split(k, dim=-1)
        idx = self.n_mixture_outputs
        reward = done = None
        if self.reward_head:
            reward = y[..., idx]
            idx += 1
        if self.done_head:
            done = y[..., idx]
        return MDNOutput(
            log_pi=F.log_softmax(logit_pi, dim=-1),
            mu=mu,
            log_sigma=log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX),
            reward=reward,
            done_logit=done,
        )

    def forward(
        self,
        z: Tensor,
        actions: Tensor,
        extra: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[MDNOutput, State]:
        """Run a batch of sequences.

        ``z`` ``(B, T, z_size)``, ``actions`` ``(B, T, action_size)``, ``extra``
        ``(B, T, extra_inputs)`` (or ``(B, T)`` for one flag), ``state`` ``(h, c)``
        each ``(1, B, H)`` or ``None`` for zeros. Returns the mixture for
        ``z_{t+1}`` at every step (``(B, T, z, K)``) and the final state.
        """
        if z.dim() != 3 or actions.dim() != 3:
            raise ValueError("forward expects batch-first (B, T, features) tensors")
        x = self._inputs(z, actions, extra)
        h_seq, new_state = self.lstm(x, state)
        return self._split(self.head(h_seq)), new_state

    def hidden_sequence(
        self,
        z: Tensor,
        actions: Tensor,
        extra: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[Tensor, State]:
        """The LSTM outputs ``h`` ``(B, T, H)`` (no head), and the final state."""
        return self.lstm(self._inputs(z, actions, extra), state)

    def step(
        self,
        z: Tensor,
        action: Tensor,
        state: State | None,
        extra: Tensor | None = None,
    ) -> tuple[MDNOutput, State, Tensor]:
        """One time step for a batch: ``z`` ``(B, z)``, ``action`` ``(B, a)``.

        Returns (the mixture for ``z_{t+1}`` with shapes ``(B, z, K)``, the new state,
        ``h`` ``(B, H)`` after the step, which is what the controller sees).
        Same weights as :meth:`forward` (it is ``forward`` with ``T = 1``).
        """
        if extra is not None:
            extra = extra.unsqueeze(1) if extra.dim() == 2 else extra.reshape(-1, 1, 1)
        out, new_state = self.forward(z.unsqueeze(1), action.unsqueeze(1), extra, state)
        return out.select_time(0), new_state, new_state[0][0]

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_sequence(
        self,
        z0: Tensor,
        actions: Tensor,
        temperature: float = 1.0,
        extra: Tensor | None = None,
        state: State | None = None,
        generator: torch.Generator | None = None,
    ) -> SampledSequence:
        """Open-loop rollout in the model's own dream.

        Starts from ``z0`` ``(B, z)``, applies ``actions`` ``(B, T, a)`` (and ``extra``
        ``(B, T, e)`` or ``(B, T)`` if the model has extra inputs) and feeds each
        sample back as the next input. Returns ``z`` ``(B, T, z)`` where ``z[:, t]``
        follows ``actions[:, t]``, plus ``sigmoid(done_logit)`` / reward if those
        heads exist. Loops over time only; the batch is processed at once.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if actions.dim() != 3:
            raise ValueError("actions must be (B, T, action_size)")
        b, t_len = actions.shape[:2]
        if state is None:
            state = self.initial_state(b, z0.device)
        z = z0
        zs, dones, rewards = [], [], []
        for t in range(t_len):
            ex = None if extra is None else extra[:, t]
            out, state, _ = self.step(z, actions[:, t], state, extra=ex)
            z = sample_next_z(out, temperature, generator=generator)
            zs.append(z)
            if out.done_logit is not None:
                dones.append(torch.sigmoid(out.done_logit))
            if out.reward is not None:
                rewards.append(out.reward)
        empty = z0.new_zeros(b, 0)
        return SampledSequence(
            z=torch.stack(zs, dim=1) if zs else z0.new_zeros(b, 0, self.z_size),
            done_prob=(torch.stack(dones, dim=1) if dones else empty) if self.done_head else None,
            reward=(torch.stack(rewards, dim=1) if rewards else empty)
            if self.reward_head
            else None,
            state=state,
        )


# ------------------------------------------------------------------ counting
def parameter_count(model: nn.Module) -> int:
    """Number of parameters as PyTorch stores them (two LSTM bias vectors)."""
    return sum(p.numel() for p in model.parameters())


def paper_parameter_count(model: MDNRNN) -> int:
    """Parameter count as in the paper / TF (one LSTM bias vector of ``4 * H``).

    At the CarRacing defaults: 423,392 - 1,024 = 422,368. PyTorch's ``bias_ih`` and
    ``bias_hh`` only ever appear as their sum, so this is the model's true
    number of degrees of freedom.
    """
    return parameter_count(model) - 4 * model.hidden_size


# --------------------------------------------------------------------- losses
def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` ``(B, T)`` over positions where ``mask`` ``(B, T)`` is true."""
    if mask is None:
        return values.mean()
    m = mask.to(device=values.device, dtype=torch.bool)
    if m.shape != values.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} != {tuple(values.shape)}")
    picked = torch.where(m, values, torch.zeros_like(values))  # no NaN * 0 leaks
    return picked.sum() / m.sum().clamp_min(1).to(values.dtype)


def mdn_log_prob(out: MDNOutput, target_z: Tensor) -> Tensor:
    """Log-density of ``target_z`` ``(..., z)`` per latent dim: ``(..., z)``.

    ``logsumexp_k(log_pi_k + log N(x; mu_k, exp(log_sigma_k)))``: never forms the
    density itself, so it neither underflows nor returns -inf for far targets.
    """
    x = target_z.to(out.mu.dtype).unsqueeze(-1)
    inv_sigma = torch.exp(-out.log_sigma)
    log_normal = -0.5 * ((x - out.mu) * inv_sigma).square() - out.log_sigma - _LOG_SQRT_2PI
    return torch.logsumexp(out.log_pi + log_normal, dim=-1)


def mdn_nll(out: MDNOutput, target_z: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mixture negative log-likelihood of ``target_z`` ``(B, T, z)``, a scalar.

    Averaged over the latent dimensions (as the original TF code does: its
    ``reduce_mean`` runs over batch, time *and* z dims, it does not sum over z)
    and over the ``(B, T)`` positions where ``mask`` is true (all if ``None``).
    Bounded below by ``LOG_SIGMA_MIN + log(sqrt(2 pi)) ~ -6.1`` thanks to the clamp.
    """
    nll = -mdn_log_prob(out, target_z).mean(dim=-1)
    return _masked_mean(nll, mask)


def done_loss(
    out: MDNOutput,
    target_done: Tensor,
    pos_weight: float = 10.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy with logits on the done head; positives weighted by ``pos_weight``."""
    if out.done_logit is None:
        raise ValueError("the model has no done head")
    logit = out.done_logit
    pw = torch.as_tensor(pos_weight, dtype=logit.dtype, device=logit.device)
    bce = F.binary_cross_entropy_with_logits(
        logit, target_done.to(logit.dtype), pos_weight=pw, reduction="none"
    )
    return _masked_mean(bce, mask)


def reward_loss(out: MDNOutput, target_reward: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of the reward head."""
    if out.reward is None:
        raise ValueError("the model has no reward head")
    err = (out.reward - target_reward.to(out.reward.dtype)).square()
    return _masked_mean(err, mask)


# ------------------------------------------------------------------- sampling
def sample_next_z(
    out_step: MDNOutput,
    temperature: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``z`` ``(B, z)`` from a one-step mixture (shapes ``(B, z, K)``).

    As in the paper: per latent dimension, the component is drawn from
    ``softmax(log_pi / tau)``, then ``z = mu + exp(log_sigma) * sqrt(tau) * N(0, 1)``.
    Fully batched; ``generator`` (on the tensors' device) makes it reproducible.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_pi, mu, log_sigma = out_step.log_pi, out_step.mu, out_step.log_sigma
    k = log_pi.shape[-1]
    probs = torch.softmax(log_pi.float() / temperature, dim=-1).reshape(-1, k)
    comp = torch.multinomial(probs, 1, generator=generator).reshape(*log_pi.shape[:-1], 1)
    mu_k = mu.gather(-1, comp).squeeze(-1)
    sigma_k = log_sigma.gather(-1, comp).squeeze(-1).exp()
    noise = torch.randn(mu_k.shape, generator=generator, device=mu_k.device, dtype=mu_k.dtype)
    return mu_k + sigma_k * math.sqrt(temperature) * noise
