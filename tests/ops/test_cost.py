"""`dictl cost`: the bill of materials from the config, priced from a fake Price List API that filters like the real one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops.aws import Clients
from ops.cli import main
from ops.cost import bill_of_materials
from model.loader import load_environment


def _product(sku: str, attributes: dict[str, str], usd: str, unit: str = "Hrs") -> str:
    """A product as GetProducts returns it: a JSON string with product attributes and OnDemand terms."""
    return json.dumps({
        "product": {"sku": sku, "productFamily": attributes.get("productFamily", ""), "attributes": attributes},
        "serviceCode": attributes["servicecode"],
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {"priceDimensions": {
            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {"unit": unit, "pricePerUnit": {"USD": usd}}}}}},
        "publicationDate": "2026-11-20T18:00:00Z",
    })


def _instance(sku: str, itype: str, usd: str, **extra: str) -> str:
    return _product(sku, {"servicecode": "AmazonEC2", "regionCode": "us-east-2", "instanceType": itype,
                          "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
                          "capacitystatus": "Used", "productFamily": "Compute Instance", **extra}, usd)


CATALOG = [
    _instance("TRN2", "trn2.48xlarge", "40.0000000000"),
    _instance("TRN2WIN", "trn2.48xlarge", "49.0000000000", operatingSystem="Windows"),
    _instance("M7I", "m7i.xlarge", "0.2016000000"),
    _instance("M7IOTHER", "m7i.xlarge", "0.2116000000", regionCode="us-west-2"),
    _product("GP3", {"servicecode": "AmazonEC2", "regionCode": "us-east-2", "productFamily": "Storage",
                     "volumeApiName": "gp3", "usagetype": "USE2-EBS:VolumeUsage.gp3"}, "0.0800000000", "GB-Mo"),
    _product("NAT", {"servicecode": "AmazonEC2", "regionCode": "us-east-2", "productFamily": "NAT Gateway",
                     "usagetype": "USE2-NatGateway-Hours"}, "0.0450000000"),
    _product("NATB", {"servicecode": "AmazonEC2", "regionCode": "us-east-2", "productFamily": "NAT Gateway",
                      "usagetype": "USE2-NatGateway-Bytes"}, "0.0450000000", "GB"),
    _product("RNAT", {"servicecode": "AmazonEC2", "regionCode": "us-east-2", "productFamily": "NAT Gateway",
                      "usagetype": "USE2-RegionalNatGateway-Hours"}, "0.0600000000"),
    _product("VPCE", {"servicecode": "AmazonVPC", "regionCode": "us-east-2", "productFamily": "VpcEndpoint",
                      "usagetype": "USE2-VpcEndpoint-Hours"}, "0.0100000000"),
    _product("NLB", {"servicecode": "AWSELB", "regionCode": "us-east-2", "productFamily": "Load Balancer-Network",
                     "usagetype": "USE2-LoadBalancerUsage"}, "0.0225000000"),
    _product("NLCU", {"servicecode": "AWSELB", "regionCode": "us-east-2", "productFamily": "Load Balancer-Network",
                      "usagetype": "USE2-LCUUsage"}, "0.0060000000", "LCU-Hrs"),
    _product("VPCEB", {"servicecode": "AmazonVPC", "regionCode": "us-east-2", "productFamily": "VpcEndpoint",
                       "usagetype": "USE2-VpcEndpoint-Bytes"}, "0.0100000000", "GB"),
]


class FakePricing:
    """GetProducts over CATALOG: TERM_MATCH on ServiceCode and attributes, one product per page (so paging runs)."""

    def __init__(self, catalog: list[str]) -> None:
        self.catalog = catalog
        self.calls = 0

    def get_products(self, *, ServiceCode: str, Filters: list[dict[str, str]], MaxResults: int,
                     NextToken: str | None = None) -> dict[str, Any]:
        self.calls += 1
        assert all(f["Type"] == "TERM_MATCH" for f in Filters)
        matching = [text for text in self.catalog if (data := json.loads(text))["serviceCode"] == ServiceCode
                    and all(data["product"]["attributes"].get(f["Field"]) == f["Value"] for f in Filters)]
        start = int(NextToken or 0)
        page: dict[str, Any] = {"PriceList": matching[start:start + 1], "FormatVersion": "aws_v1"}
        if start + 1 < len(matching):
            page["NextToken"] = str(start + 1)
        return page


def _dictl(pricing: FakePricing, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    factory = lambda region, profile: Clients(None, overrides={"pricing": pricing})  # noqa: E731
    code = main(["cost", *argv], clients_factory=factory)
    out, err = capsys.readouterr()
    return code, out, err


def test_prod_costs_its_instances_volumes_nat_and_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_environment("prod")
    pricing = FakePricing(CATALOG)
    code, out, err = _dictl(pricing, "--env", "prod", "--json", capsys=capsys)
    assert code == 0, err
    result = json.loads(out)
    by_item = {line["item"]: line for line in result["lines"]}
    prefill = config.fleets["prefill"]
    assert by_item["fleet prefill: trn2.48xlarge"]["per_hour"] == pytest.approx(40.0 * prefill.count)
    assert by_item["fleet prefill: trn2.48xlarge"]["per_hour_at_max"] == pytest.approx(40.0 * prefill.ceiling)
    warm = {name: f.warm_pool.size if f.warm_pool else 0 for name, f in config.fleets.items()}
    assert warm["prefill"] > 0  # prod keeps Stopped instances, whose volumes bill
    # Three control hosts, each with its root volume and its etcd member's volume, behind one load balancer.
    assert by_item["control hosts: m7i.xlarge"]["quantity"] == 3
    assert by_item["control hosts: m7i.xlarge"]["per_hour"] == pytest.approx(3 * 0.2016)
    gib = sum(f.root_volume_gib * (f.count + warm[n]) for n, f in config.fleets.items()) \
        + 3 * (config.control_host.root_volume_gib + config.control_host.etcd_volume_gib)
    assert by_item["EBS gp3 volumes"]["per_hour"] == pytest.approx(0.08 * gib / 730)
    assert by_item["NAT gateway"]["unit_price"] == 0.045  # the zonal gateway's hours, not bytes or regional
    endpoints = by_item["interface VPC endpoints"]
    # Every API the nodes call at boot, + monitoring (distack proxy): tests/test_offline_boot.py holds the list to the
    # synthesized template.
    assert endpoints["quantity"] == 12 and endpoints["per_hour"] == pytest.approx(0.12)
    assert by_item["Network Load Balancer"]["per_hour"] == pytest.approx(0.0225)  # its hours, not its capacity units
    assert result["per_hour"] == pytest.approx(sum(line["per_hour"] for line in result["lines"]))
    assert result["published"].startswith("2026-11-20")


def test_a_product_missing_from_the_price_list_is_named_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    pricing = FakePricing([text for text in CATALOG if '"NAT Gateway"' not in text])
    code, out, err = _dictl(pricing, "--env", "dev", capsys=capsys)
    assert code == 1
    assert "NAT gateway" in out and "n/a" in out and "total" in out
    assert "not priced: NAT gateway: no on-demand price in the price list for AmazonEC2 regionCode=" in err


def test_capacity_block_fleets_are_not_priced_on_demand() -> None:
    data = load_environment("prod").model_dump(exclude_unset=True)
    data["fleets"]["decode"]["capacity"] = {"type": "capacity-block", "reservation_id": "cr-0123456789abcdef0"}
    data["placement_group"] = False
    from model.config import DeploymentConfig

    lines = {line.item: line for line in bill_of_materials(DeploymentConfig.model_validate(data))}
    assert lines["fleet decode: trn2.48xlarge"].query is None
    assert lines["fleet prefill: trn2.48xlarge"].query is not None


def test_a_single_host_control_plane_costs_one_host_and_its_volumes() -> None:
    config = load_environment("dev")
    by_item = {line.item: line for line in bill_of_materials(config)}
    assert by_item["control hosts: m7i.xlarge"].quantity == 1
    fleets = sum(f.root_volume_gib * f.count for f in config.fleets.values())
    assert by_item["EBS gp3 volumes"].quantity == fleets + config.control_host.root_volume_gib \
        + config.control_host.etcd_volume_gib
