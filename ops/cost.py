"""`dictl cost`: what one deployment costs per hour at on-demand list prices, read from the AWS Price List API.

The bill of materials comes from the config alone (what the stack creates); the prices come from the Price List
Query API at run time, so they are current and for the config's region, and nothing here has to be kept up to date.
The API has two endpoints, us-east-1 and ap-south-1, whatever the deployment's Region (the Price List Service API
reference: https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_Operations_AWS_Price_List_Service.html;
https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/using-price-list-query-api.html).
Products are matched by their attributes (`regionCode`, `instanceType`, `volumeApiName`, ...) and, where a service
lists many products, by the suffix of their `usagetype` (`USE2-NatGateway-Hours`: the prefix names the Region).
A line whose product is not found, or is ambiguous, is shown as unpriced and makes the command exit 1, so a changed
price list never turns into a silently wrong total.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ops.aws import pages
from ops.output import table
from model.config import DeploymentConfig
from model.control_plane import control_hosts

PRICING_REGION = "us-east-1"
HOURS_PER_MONTH = 730  # AWS's own convention for per-month prices (EBS GB-month, Pricing Calculator)
# The interface endpoints the stack creates with `network.vpc_endpoints` (stacks/components/network.py), plus
# CloudWatch's when the DiStack proxy publishes metrics.
INTERFACE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages", "logs", "ec2", "autoscaling", "cloudformation",
                       "secretsmanager", "ecr.api", "ecr.dkr", "sts")
METRICS_ENDPOINT = "monitoring"
NOT_INCLUDED = ("data processed by the NAT gateway and the endpoints", "the load balancer's capacity units",
                "S3 storage and requests", "Secrets Manager secrets", "ECR storage of the cached images",
                "gp3 throughput and IOPS provisioned above the baseline (warm-pool fleets' root volumes)",
                "CloudWatch logs, metrics, alarms and the dashboard", "data transfer")


@dataclass(frozen=True)
class PriceQuery:
    """How to find one product in the price list: its service, exact attributes, and optionally a usagetype suffix."""

    service: str
    attributes: tuple[tuple[str, str], ...]
    usage_suffix: str = ""

    def filters(self) -> list[dict[str, str]]:
        return [{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in self.attributes]


@dataclass(frozen=True)
class Line:
    """One priced part of the deployment: how many units at deploy time and at every fleet's max_count."""

    item: str
    unit: str  # "hour" (per instance or gateway) or "GB-month"
    quantity: float
    quantity_at_max: float
    query: PriceQuery | None  # None: not on-demand (a Capacity Block is priced when it is bought)
    note: str = ""


@dataclass
class PricedLine:
    item: str
    unit: str
    quantity: float
    quantity_at_max: float
    unit_price: float | None
    per_hour: float | None
    per_hour_at_max: float | None
    note: str = ""


@dataclass
class Estimate:
    env: str
    region: str
    lines: list[PricedLine]
    published: str
    not_included: tuple[str, ...] = NOT_INCLUDED
    unpriced: list[str] = field(default_factory=list)

    @property
    def per_hour(self) -> float:
        return sum(line.per_hour or 0.0 for line in self.lines)

    @property
    def per_hour_at_max(self) -> float:
        return sum(line.per_hour_at_max or 0.0 for line in self.lines)


def _instance(region: str, instance_type: str) -> PriceQuery:
    return PriceQuery("AmazonEC2", (("regionCode", region), ("instanceType", instance_type),
                                    ("operatingSystem", "Linux"), ("tenancy", "Shared"), ("preInstalledSw", "NA"),
                                    ("capacitystatus", "Used")))


def bill_of_materials(config: DeploymentConfig) -> list[Line]:
    """Every part of the deployment that bills by the hour or by the GB-month, from the config alone."""
    region = config.region
    lines: list[Line] = []
    gib, gib_at_max = 0.0, 0.0
    for name, fleet in config.fleets.items():
        block = fleet.capacity.type == "capacity-block"
        lines.append(Line(f"fleet {name}: {fleet.instance_type}", "hour", fleet.count, fleet.ceiling,
                          None if block else _instance(region, fleet.instance_type),
                          "Capacity Block: paid when the block is bought" if block else ""))
        # A Stopped warm-pool instance bills only its volumes.
        warm = fleet.warm_pool.size if fleet.warm_pool else 0
        gib += fleet.root_volume_gib * (fleet.count + warm)
        gib_at_max += fleet.root_volume_gib * (fleet.ceiling + warm)
    control, hosts = config.control_host, control_hosts(config)
    lines.append(Line(f"control hosts: {control.instance_type}", "hour", hosts, hosts,
                      _instance(region, control.instance_type)))
    # Each host has its root volume and its member's retained etcd volume.
    gib += hosts * (control.root_volume_gib + control.etcd_volume_gib)
    gib_at_max += hosts * (control.root_volume_gib + control.etcd_volume_gib)
    # The internal Network Load Balancer in front of the proxies (stacks/components/edge.py): its hours. Its capacity
    # units (NLCU) follow the traffic and are left out, like the data the NAT gateway processes. The Price List names
    # it productFamily "Load Balancer-Network" with usage type REGION-LoadBalancerUsage; a wrong guess here makes this
    # line unpriced, named, and the command exit 1.
    lines.append(Line("Network Load Balancer", "hour", 1, 1, PriceQuery(
        "AWSELB", (("regionCode", region), ("productFamily", "Load Balancer-Network")), "LoadBalancerUsage")))
    lines.append(Line("EBS gp3 volumes", "GB-month", gib, gib_at_max, PriceQuery(
        "AmazonEC2", (("regionCode", region), ("productFamily", "Storage"), ("volumeApiName", "gp3")))))
    net = config.network
    if not net.existing and net.nat_gateway:
        lines.append(Line("NAT gateway", "hour", 1, 1, PriceQuery(
            "AmazonEC2", (("regionCode", region), ("productFamily", "NAT Gateway")), "NatGateway-Hours")))
    if net.vpc_endpoints:
        names = INTERFACE_ENDPOINTS + ((METRICS_ENDPOINT,) if config.runs_distack_proxy else ())
        lines.append(Line("interface VPC endpoints", "hour", len(names), len(names),
                          PriceQuery("AmazonVPC", (("regionCode", region),), "VpcEndpoint-Hours"),
                          f"{', '.join(names)}; one AZ each"))
    return lines


def _usage_matches(usage_type: str, suffix: str) -> bool:
    """`USE2-NatGateway-Hours` and `NatGateway-Hours` match `NatGateway-Hours`; `USE2-RegionalNatGateway-Hours` not."""
    return usage_type == suffix or usage_type.endswith("-" + suffix)


def _on_demand_price(product: Mapping[str, Any]) -> float | None:
    prices = [float(dimension["pricePerUnit"]["USD"])
              for term in product.get("terms", {}).get("OnDemand", {}).values()
              for dimension in term.get("priceDimensions", {}).values()
              if "USD" in dimension.get("pricePerUnit", {})]
    positive = sorted({price for price in prices if price > 0})
    return positive[0] if len(positive) == 1 else None


def find_price(pricing: Any, query: PriceQuery) -> tuple[float | None, str, str]:
    """(USD per unit or None, publication date, why not found)."""
    products = []
    for page in pages(pricing.get_products, ServiceCode=query.service, Filters=query.filters(), MaxResults=100):
        for text in page.get("PriceList", []):
            product = json.loads(text) if isinstance(text, str) else text
            usage = product.get("product", {}).get("attributes", {}).get("usagetype", "")
            if not query.usage_suffix or _usage_matches(usage, query.usage_suffix):
                products.append(product)
    prices = {price for price in map(_on_demand_price, products) if price is not None}
    published = max((p.get("publicationDate", "") for p in products), default="")
    if len(prices) == 1:
        return prices.pop(), published, ""
    attributes = ", ".join(f"{k}={v}" for k, v in query.attributes)
    what = f"{query.service} {attributes}" + (f", usagetype *{query.usage_suffix}" if query.usage_suffix else "")
    if not prices:
        return None, published, f"no on-demand price in the price list for {what}"
    return None, published, f"{len(prices)} different prices for {what}"


def estimate(config: DeploymentConfig, pricing: Any) -> Estimate:
    """Price every line of the bill of materials."""
    priced: list[PricedLine] = []
    unpriced: list[str] = []
    dates: list[str] = []
    for line in bill_of_materials(config):
        price = None
        note = line.note
        if line.query is not None:
            price, published, reason = find_price(pricing, line.query)
            dates.append(published)
            if price is None:
                unpriced.append(f"{line.item}: {reason}")
                note = reason
        per = 1.0 / HOURS_PER_MONTH if line.unit == "GB-month" else 1.0
        priced.append(PricedLine(line.item, line.unit, line.quantity, line.quantity_at_max, price,
                                 None if price is None else price * line.quantity * per,
                                 None if price is None else price * line.quantity_at_max * per, note))
    return Estimate(config.name, config.region, priced, max(dates, default=""), unpriced=unpriced)


def _money(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"${value:,.{digits}f}"


def _quantity(value: float) -> str:
    return f"{value:g}"


def render(result: Estimate) -> str:
    rows = [(line.item, f"{_quantity(line.quantity)} ({_quantity(line.quantity_at_max)})",
             f"{_money(line.unit_price, 4)}/{line.unit}", _money(line.per_hour), _money(line.per_hour_at_max),
             line.note) for line in result.lines]
    rows.append(("total", "", "", _money(result.per_hour), _money(result.per_hour_at_max), ""))
    head = (f"{result.env} in {result.region}: on-demand list prices"
            + (f" published {result.published[:10]}" if result.published else "") + " (AWS Price List API)")
    foot = "not included: " + "; ".join(result.not_included)
    return "\n".join([head, table(("part", "quantity (at max)", "unit price", "per hour", "per hour at max", "note"),
                                  rows), foot])


def run(config: DeploymentConfig, pricing: Any, *, as_json: bool) -> int:
    result = estimate(config, pricing)
    if as_json:
        data = asdict(result) | {"per_hour": result.per_hour, "per_hour_at_max": result.per_hour_at_max}
        print(json.dumps(data, indent=2))
    else:
        print(render(result))
    for problem in result.unpriced:
        print(f"dictl cost: not priced: {problem}", file=sys.stderr)
    return 1 if result.unpriced else 0


def pricing_client(clients: Any) -> Any:
    """The Price List client, in the API's own Region (an injected one in tests)."""
    return clients.get("pricing", region=PRICING_REGION)
