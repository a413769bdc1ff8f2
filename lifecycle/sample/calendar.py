"""The time axis of the sample world: seasonality, acquisition intensity, spend, and thinning.

All intensities are tabulated per day of the window once per world (small: days x channels), from
the world seed alone, so every chunk sees the same calendar. See README.md ("Time and
seasonality", "Acquisition", "Marketing spend") for the formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lifecycle.sample.text import SECONDS_PER_DAY

SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
CHANNELS = ("organic", "paid_search", "social", "referral", "email")
PAID_CHANNELS = ("paid_search", "social", "email")
CHANNEL_INDEX = {c: i for i, c in enumerate(CHANNELS)}

# Monday .. Sunday multipliers (normalized to mean 1 below).
_WEEKLY_ORDERS = np.array([1.04, 1.03, 1.00, 0.98, 0.96, 0.93, 1.06])
_WEEKLY_ACQUISITION = np.array([1.06, 1.05, 1.02, 1.00, 0.95, 0.90, 1.02])
# Hour of day (UTC) multipliers: night trough, lunch and evening peaks (normalized below).
_HOURLY = np.array(
    [
        0.45,
        0.35,
        0.30,
        0.30,
        0.35,
        0.45,
        0.60,
        0.80,
        0.95,
        1.05,
        1.10,
        1.15,
        1.20,
        1.20,
        1.15,
        1.10,
        1.10,
        1.15,
        1.30,
        1.45,
        1.50,
        1.40,
        1.10,
        0.75,
    ]
)


def _bump(doy: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Return a Gaussian bump over the day of year (0-based), circular over 365 days."""
    d = np.abs(doy - centre)
    d = np.minimum(d, 365 - d)
    return np.exp(-0.5 * (d / width) ** 2)


def q4_shape(doy: np.ndarray) -> np.ndarray:
    """Return the Q4 holiday shape (Black Friday / pre-Christmas), peak about 1."""
    return np.clip(_bump(doy, 332, 16) + 0.6 * _bump(doy, 351, 6), 0, 1.3)


def yearly_shape(doy: np.ndarray, q4_peak: float) -> np.ndarray:
    """Return the yearly seasonality (Q4 peak, January sales, summer dip), mean 1 over a year."""

    def raw(d: np.ndarray) -> np.ndarray:
        return 1 + q4_peak * q4_shape(d) + 0.15 * _bump(d, 8, 6) - 0.12 * _bump(d, 210, 25)

    return raw(doy) / raw(np.arange(365.0)).mean()


@dataclass(frozen=True)
class Calendar:
    """Per-day tables of the world window ``[start_ts, end_ts)`` (epoch seconds, UTC)."""

    start_day: int  # days since 1970-01-01
    n_days: int
    start_ts: int
    end_ts: int  # exclusive: midnight after `end`
    day_factor: np.ndarray  # activity seasonality per day (orders, sessions), mean ~1
    hour_factor: np.ndarray  # 24 hour-of-day multipliers, mean 1
    hour_cdf: np.ndarray  # 25 cumulative hour probabilities (for stratified times of day)
    acq_cdf: np.ndarray  # cumulative share of acquisitions up to and including each day
    chan_cum: np.ndarray  # (n_days, channels) cumulative channel probabilities per day
    expected: np.ndarray  # (n_days, channels) expected acquisitions per day and channel
    q4: np.ndarray  # Q4 shape per day (0..1.3), used for campaign names

    @property
    def smax(self) -> float:
        """Return the maximum of day_factor x hour_factor (the thinning envelope)."""
        return float(self.day_factor.max() * self.hour_factor.max())

    def day_of(self, t: np.ndarray) -> np.ndarray:
        """Return the 0-based day index in the window of epoch seconds ``t``."""
        return (t - self.start_ts) // SECONDS_PER_DAY

    def activity(self, t: np.ndarray) -> np.ndarray:
        """Return the seasonal activity multiplier (day x hour) at epoch seconds ``t``."""
        day = np.clip(self.day_of(t), 0, self.n_days - 1)
        return self.day_factor[day] * self.hour_factor[(t % SECONDS_PER_DAY) // 3600]

    def time_of_day(self, frac: np.ndarray) -> np.ndarray:
        """Return seconds into the day for quantiles ``frac`` of the diurnal profile (monotone)."""
        h = np.clip(np.searchsorted(self.hour_cdf, frac, side="right") - 1, 0, 23)
        within = (frac - self.hour_cdf[h]) / (self.hour_cdf[h + 1] - self.hour_cdf[h])
        return h * 3600 + np.clip(np.floor(within * 3600), 0, 3599).astype(np.int64)


def build_calendar(
    start_day: int,
    n_days: int,
    customers: int,
    channel_mix: dict[str, float],
    annual_growth: float,
    q4_peak: float,
    rng: np.random.Generator,
) -> Calendar:
    """Return the calendar: seasonality tables and the per-day, per-channel acquisition plan."""
    days = start_day + np.arange(n_days)
    d64 = days.astype("datetime64[D]")
    doy = (d64 - d64.astype("datetime64[Y]")).astype(np.int64).astype(np.float64)
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    q4 = q4_shape(doy)

    weekly_orders = _WEEKLY_ORDERS / _WEEKLY_ORDERS.mean()
    day_factor = yearly_shape(doy, q4_peak) * weekly_orders[dow]
    hour_factor = _HOURLY / _HOURLY.mean()
    hour_cdf = np.concatenate([[0.0], np.cumsum(hour_factor) / hour_factor.sum()])

    growth = (1 + annual_growth) ** (np.arange(n_days) / 365.25)
    weekly_acq = _WEEKLY_ACQUISITION / _WEEKLY_ACQUISITION.mean()
    day_noise = rng.lognormal(0.0, 0.10, n_days)
    base = growth * yearly_shape(doy, q4_peak) * weekly_acq[dow] * day_noise

    spend_noise = rng.lognormal(0.0, 0.20, (n_days, len(CHANNELS)))
    modulation = np.ones((n_days, len(CHANNELS)))
    modulation[:, CHANNEL_INDEX["paid_search"]] = (1 + 0.4 * q4) * spend_noise[:, 1]
    modulation[:, CHANNEL_INDEX["social"]] = (1 + 0.7 * q4) * spend_noise[:, 2]
    campaign_days = np.where((dow == 1) | (dow == 3), 1.5, 0.8)  # Tuesday / Thursday sends
    modulation[:, CHANNEL_INDEX["email"]] = campaign_days * (1 + 0.5 * q4) * spend_noise[:, 4]
    mix = np.array([channel_mix.get(c, 0.0) for c in CHANNELS], dtype=np.float64)
    intensity = base[:, None] * mix[None, :] * modulation

    per_day = intensity.sum(axis=1)
    acq_cdf = np.cumsum(per_day) / per_day.sum()
    acq_cdf[-1] = 1.0
    chan_cum = np.cumsum(intensity, axis=1) / per_day[:, None]
    chan_cum[:, -1] = 1.0
    expected = customers * intensity / per_day.sum()
    return Calendar(
        start_day=start_day,
        n_days=n_days,
        start_ts=start_day * SECONDS_PER_DAY,
        end_ts=(start_day + n_days) * SECONDS_PER_DAY,
        day_factor=day_factor,
        hour_factor=hour_factor,
        hour_cdf=hour_cdf,
        acq_cdf=acq_cdf,
        chan_cum=chan_cum,
        expected=expected,
        q4=q4,
    )


def acquisition_times(cal: Calendar, quantiles: np.ndarray) -> np.ndarray:
    """Return acquisition epoch seconds for quantiles in [0, 1) of the acquisition plan.

    The map is monotone, so stratified quantiles ``(i + U_i) / N`` give acquisition times that
    never decrease with the person index ``i``.
    """
    day = np.minimum(np.searchsorted(cal.acq_cdf, quantiles, side="right"), cal.n_days - 1)
    lo = np.where(day > 0, cal.acq_cdf[np.maximum(day - 1, 0)], 0.0)
    width = cal.acq_cdf[day] - lo
    frac = np.clip((quantiles - lo) / np.where(width > 0, width, 1.0), 0.0, 1.0 - 1e-12)
    return cal.start_ts + day * SECONDS_PER_DAY + cal.time_of_day(frac)


def channels_for(cal: Calendar, t: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Return channel codes drawn from the day's channel mix with uniforms ``u``."""
    cum = cal.chan_cum[cal.day_of(t)]
    return (u[:, None] >= cum).sum(axis=1).clip(0, len(CHANNELS) - 1).astype(np.int8)


def thin(
    rng: np.random.Generator,
    cal: Calendar,
    a: np.ndarray,
    b: np.ndarray,
    rate_per_year: np.ndarray,
    modulation: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (segment index, epoch seconds) of a seasonal Poisson process on each ``[a, b)``.

    The intensity on segment ``s`` at time ``t`` is ``rate_per_year[s] * activity(t) *
    modulation(s, t)`` (``modulation`` in [0, 1]); it is simulated by thinning a homogeneous
    process at the envelope rate. Events come back sorted by segment, then time.
    """
    span = np.maximum(b - a, 0)
    smax = cal.smax
    lam = rate_per_year * (span / SECONDS_PER_YEAR) * smax
    n = rng.poisson(np.maximum(lam, 0.0))
    seg = np.repeat(np.arange(a.size), n)
    t = a[seg] + np.floor(rng.random(seg.size) * span[seg]).astype(np.int64)
    keep = rng.random(seg.size) * smax < cal.activity(t) * (
        modulation(seg, t) if modulation is not None else 1.0
    )
    seg, t = seg[keep], t[keep]
    order = np.lexsort((t, seg))
    return seg[order], t[order]
