"""The synthetic sample world and the local HTTP mirror that serves it.

    from mmlens.sample import ensure_world, serve_sample_world, Fault
    world = ensure_world(cfg)                       # generated once per profile and seed
    with serve_sample_world(cfg) as mirror:         # http://127.0.0.1:<port>
        mirror.add_fault(r"/tmdb/3/movie/", Fault("status", status=429, retry_after="1"))
        ...

``world.py`` documents the rating model, ``web.py`` the simulated TMDB/IMDb sites and
``mirror.py`` the routes and fault kinds.
"""

from __future__ import annotations

from mmlens.sample.mirror import Fault, Mirror, ServedRequest, serve, serve_sample_world
from mmlens.sample.world import PROFILES, SampleProfile, ensure_world, generate_world, world_dir

__all__ = [
    "PROFILES",
    "Fault",
    "Mirror",
    "SampleProfile",
    "ServedRequest",
    "ensure_world",
    "generate_world",
    "serve",
    "serve_sample_world",
    "world_dir",
]
