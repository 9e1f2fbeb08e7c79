"""In-process demonstration of the protocol steps on synthetic data."""

import time

import numpy as np

from psi import Key, encode_identifier, hash_to_curve
from psi.protocol import client, server


def main() -> None:
    rng = np.random.default_rng()
    universe = rng.permutation(50_000)
    platform = universe[:20_000]
    advertiser = np.concatenate([universe[15_000:20_000], universe[30_000:33_000]])
    start = time.perf_counter()
    t = hash_to_curve([encode_identifier("email", f"u{i}@example.com") for i in platform])
    x = hash_to_curve([encode_identifier("email", f"u{i}@example.com") for i in advertiser])
    a, b = Key.generate(), Key.generate()
    table = server.build_table(b, t)
    returned = client.double_blind_table(a, [table])
    n = server.count(server.blind_client_set(b, client.blind(a, x)), returned, len(table))
    print(f"intersection {n} (true overlap {len(set(platform) & set(advertiser))}) "
          f"in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
