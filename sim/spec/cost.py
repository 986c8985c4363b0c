"""What a design costs to buy and to run (issue 23): the hardware file's `cost:` and the
scenario's `site:`. The arithmetic that turns a run into money is sim/results/cost.py; the
format and the physics of power are in docs/cost.md."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import NonNegativeNumber, PositiveNumber, Power, Spec

ShareOfOne = Annotated[float, Field(ge=0, le=1)]
SECONDS_PER_HOUR = 3600.0
HOURS_PER_YEAR = 24 * 365.25
HOURS_PER_MONTH = HOURS_PER_YEAR / 12


class HardwareCost(Spec):
    """One rack (or server) of the design, as bought and as powered (hardware file `cost:`)."""

    capex_per_rack: PositiveNumber = Field(
        description="$ per rack: GPUs, CPUs, scale-up switches and the rack's share of the "
                    "scale-out fabric")
    power_per_rack: Power = Field(description="IT power of the rack at full load, e.g. 132 kW")
    idle_power_fraction: ShareOfOne = Field(
        description="share of the full-load power a rack draws when its GPUs are idle")
    amortisation_years: PositiveNumber = Field(description="years over which capex is spread")

    def hourly(self, site: Site, racks: int, power_kw: float) -> tuple[float, float, float]:
        """(capex, energy, hosting) in $ per hour for `racks` racks drawing `power_kw` of IT
        power: the one cost model's arithmetic (docs/cost.md)."""
        capex = self.capex_per_rack * racks / (self.amortisation_years * HOURS_PER_YEAR)
        energy = power_kw * site.pue * site.electricity_per_kwh
        hosting = racks * self.power_per_rack / 1e3 * site.hosting_per_kw_month / HOURS_PER_MONTH
        return capex, energy, hosting

    def gpu_hour_price(self, site: Site | None, gpus_per_rack: int) -> float:
        """$ per GPU-hour with every GPU busy (the closed form's price), a rack's cost per
        hour shared over its GPUs."""
        return sum(self.hourly(site or DEFAULT_SITE, 1, self.power_per_rack / 1e3)) \
            / gpus_per_rack


class Site(Spec):
    """Where the racks run (scenario `site:`): energy and hosting prices."""

    electricity_per_kwh: NonNegativeNumber = Field(description="$ per kWh of facility energy")
    pue: Annotated[float, Field(ge=1)] = Field(
        description="power usage effectiveness: facility power / IT power")
    hosting_per_kw_month: NonNegativeNumber = Field(
        description="$ per kW of provisioned IT power per month (space, cooling plant, "
                    "operations; colocation's price)")


# The site a scenario gets when it names none: every figure an assumption, reported as such in
# summary.json (`cost.site_assumed: true`). Electricity: about the US industrial average
# (U.S. EIA, Electric Power Monthly, https://www.eia.gov/electricity/monthly/: roughly 8
# cents/kWh in 2024; not re-checked here); PUE: a modern liquid-cooled AI hall (assumption;
# Uptime Institute's annual survey puts the industry average near 1.5-1.6); hosting:
# wholesale colocation per kW-month (assumption).
DEFAULT_SITE = Site(electricity_per_kwh=0.08, pue=1.3, hosting_per_kw_month=150.0)


def parse_site(text: str) -> dict:
    """`--site electricity_per_kwh=0.1,pue=1.2,hosting_per_kw_month=150` as a validated
    `site:` mapping; every key of Site must be given."""
    from pydantic import ValidationError  # noqa: PLC0415

    from .errors import SpecError  # noqa: PLC0415

    fields = list(Site.model_fields)
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise SpecError(f"cannot read {part!r} as a site figure", file="command line",
                            key="--site", fix=f"write key=value pairs of {', '.join(fields)}")
        out[key] = value.strip()
    try:
        return Site(**out).model_dump()
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise SpecError(f"site figures {text!r}: {where}: {first['msg']}", file="command line",
                        key="--site", fix=f"give each of {', '.join(fields)} a number "
                                          "(pue at least 1)") from None
