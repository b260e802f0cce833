"""Registry at scale: register N devices, a fresh client's first full sync, later reads.

    python -m benchmarks.registry [--devices 10000] [--runs 5]

Targets (issue 3): register 10,000 in < 5 s, first full sync < 2 s, later reads < 1 ms.
Each run uses a private Mosquitto started from docker/mosquitto/mosquitto.conf (the
deployment config, whose max_queued_messages is raised) on a free port.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

from isa_common_mqtt import MQTTClient
from isa_common_mqtt.testing import MosquittoProcess

CONFIG = Path(__file__).resolve().parent.parent / "docker" / "mosquitto" / "mosquitto.conf"


def one_run(devices: int) -> dict[str, float]:
    with MosquittoProcess(config_file=CONFIG) as broker:
        broker.start()
        org = f"bench-{uuid.uuid4().hex[:6]}"
        writer = MQTTClient(host=broker.host, port=broker.port, organization_id=org)
        writer.list_devices()  # the empty sync is not part of the registration time
        started = time.perf_counter()
        for i in range(devices):
            writer.register_device(f"device-{i:06d}", f"Device {i}", "sensor",
                                   {"floor": i % 10})
        register = time.perf_counter() - started
        started = time.perf_counter()
        result = writer.register_devices({"device_id": f"device-{i:06d}",
                                          "device_name": f"Device {i}", "device_type": "sensor",
                                          "metadata": {"floor": i % 10}}
                                         for i in range(devices))
        register_batch = time.perf_counter() - started
        assert result["registered_count"] == devices, result["errors"][:3]
        writer.close()

        reader = MQTTClient(host=broker.host, port=broker.port, organization_id=org)
        started = time.perf_counter()
        first = reader.list_devices(page=1, page_size=50)
        sync = time.perf_counter() - started
        assert first["total_count"] == devices, first["total_count"]
        started = time.perf_counter()
        page = reader.list_devices(page=devices // 100 + 1, page_size=50)
        later_page = time.perf_counter() - started
        assert len(page["devices"]) == 50
        started = time.perf_counter()
        info = reader.get_device_info(f"device-{devices // 2:06d}")
        device_info = time.perf_counter() - started
        assert info is not None
        reader.close()
    return {"register": register, "register_batch": register_batch, "first_sync": sync,
            "later_page": later_page, "device_info": device_info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run(args.devices) for _ in range(args.runs)]
    targets = {"register": 5.0, "register_batch": 5.0, "first_sync": 2.0, "later_page": 0.001,
               "device_info": 0.001}
    print(f"registry of {args.devices:,} devices, median of {args.runs} runs "
          "(Mosquitto, docker/mosquitto/mosquitto.conf)")
    print(f"{'figure':<34}{'median':>12}{'min':>12}{'max':>12}{'target':>12}")
    labels = {"register": f"register_device x {args.devices:,}",
              "register_batch": f"register_devices({args.devices:,}) again", "first_sync":
              "fresh client: first list_devices", "later_page": "later list_devices page",
              "device_info": "get_device_info"}
    for key, label in labels.items():
        values = [r[key] for r in runs]
        print(f"{label:<34}{_fmt(statistics.median(values)):>12}{_fmt(min(values)):>12}"
              f"{_fmt(max(values)):>12}{'< ' + _fmt(targets[key]):>12}")


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
