"""Optional Boltzmann-code back-ends (CAMB, CLASS) for the shape of the linear P(k).

Each returns the z = 0 linear matter power on a log-spaced table, k in [h/Mpc] and P in
[(Mpc/h)³] with an arbitrary amplitude: :class:`~cocasbi.cosmology.Cosmology` renormalises it
to σ8 and uses its own growth factors, so only the shape comes from the Boltzmann code.
Radiation and massless neutrinos are included there, which the N-body background neglects.
"""

from __future__ import annotations

import numpy as np

K_MIN, K_MAX, N_K = 1e-4, 50.0, 600  # table range [h/Mpc]


def _camb_table(cosmo):
    import camb

    h = cosmo.h
    pars = camb.set_params(
        H0=100 * h, ombh2=cosmo.Omega_b * h * h, omch2=(cosmo.Omega_m - cosmo.Omega_b) * h * h,
        ns=cosmo.n_s, As=2e-9, mnu=0.0, omk=0.0, WantTransfer=True, kmax=K_MAX * h * 1.1,
    )
    pars.set_matter_power(redshifts=[0.0], kmax=K_MAX * h * 1.1)
    results = camb.get_results(pars)
    k, _, pk = results.get_matter_power_spectrum(minkh=K_MIN, maxkh=K_MAX, npoints=N_K)
    return np.asarray(k), np.asarray(pk[0])


def _class_table(cosmo):
    from classy import Class

    h = cosmo.h
    engine = Class()
    engine.set({
        "h": h, "omega_b": cosmo.Omega_b * h * h,
        "omega_cdm": (cosmo.Omega_m - cosmo.Omega_b) * h * h, "n_s": cosmo.n_s, "A_s": 2e-9,
        "output": "mPk", "P_k_max_h/Mpc": K_MAX * 1.1, "z_max_pk": 0.0,
    })
    engine.compute()
    k = np.geomspace(K_MIN, K_MAX, N_K)
    pk = np.array([engine.pk_lin(kk * h, 0.0) for kk in k]) * h**3
    engine.struct_cleanup()
    return k, pk


def linear_power_table(cosmo):
    """(k [h/Mpc], P(k) [(Mpc/h)³], arbitrary amplitude) from the cosmology's back-end."""
    backends = {"camb": _camb_table, "class": _class_table}
    try:
        return backends[cosmo.transfer](cosmo)
    except ImportError as err:
        raise ImportError(
            f"transfer back-end {cosmo.transfer!r} needs its Python package "
            f"({'camb' if cosmo.transfer == 'camb' else 'classy'}): {err}"
        ) from None


def interpolate_power(k, k_table, p_table):
    """Log-log interpolation of a power table, extrapolated with the end slopes."""
    lk, lp = np.log(k_table), np.log(p_table)
    x = np.log(np.asarray(k, dtype=np.float64))
    out = np.interp(x, lk, lp)
    lo, hi = x < lk[0], x > lk[-1]
    out[lo] = lp[0] + (x[lo] - lk[0]) * (lp[1] - lp[0]) / (lk[1] - lk[0])
    out[hi] = lp[-1] + (x[hi] - lk[-1]) * (lp[-1] - lp[-2]) / (lk[-1] - lk[-2])
    return np.exp(out)
