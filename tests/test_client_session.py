"""The client's session driver over real gRPC: progress for every long step, and the
table's exponentiation overlapping its download."""

import numpy as np
import pytest

from psi import encode_identifier
from psi.protocol import Policy
from psi_client.session import ClientConfig, match
from psi_server.service import ServerConfig, start_server
from psi_server.synthetic import advertiser_list, generate

from .support import free_port, make_registry


class Recorder:
    def __init__(self):
        self.events = []
        self.totals = {}
        self.done = {}

    def start(self, step, total):
        self.events.append(("start", step))
        self.totals[step] = total
        self.done[step] = 0

    def advance(self, step, amount):
        self.events.append(("advance", step))
        self.done[step] += amount


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    syn = generate(3000, seed=3)  # a table of three messages
    db, token_file = make_registry(tmp, syn.rows)
    port = free_port()
    running = start_server(ServerConfig(db=db, listen=f"127.0.0.1:{port}", insecure=True, workers=1,
                                        policy=Policy(noise=False, max_points_per_message=1024,
                                                      max_digests_per_message=64)))
    yield syn, f"127.0.0.1:{port}", token_file.read_text().strip()
    running.stop(1)


def test_every_long_step_reports_progress_to_its_total(served):
    syn, address, token = served
    listing = advertiser_list(syn, 400, overlap=0.5, seed=9)
    encoded = list(dict.fromkeys(encode_identifier("email", e) for e in listing))
    rec = Recorder()
    out = match(ClientConfig(server=address, token=token, insecure=True, workers=2, min_table_size=10),
                encoded, np.arange(len(encoded)), len(encoded), ["email"], 0.1, rec)
    assert out.noisy_count == len(set(listing) & syn.matchable)
    steps = ["hashing", "blinding", "uploading", "downloading", "exponentiating", "sorting", "returning"]
    assert set(rec.totals) == set(steps)
    assert list(rec.totals)[:2] == ["hashing", "blinding"] and list(rec.totals)[-1] == "returning"
    assert all(rec.done[s] == rec.totals[s] for s in steps), (rec.done, rec.totals)
    assert rec.totals["downloading"] == out.table_size and rec.totals["uploading"] == 400


def test_table_exponentiation_overlaps_its_download(served):
    syn, address, token = served
    encoded = [encode_identifier("email", e) for e in advertiser_list(syn, 200, overlap=0.5, seed=10)]
    rec = Recorder()
    match(ClientConfig(server=address, token=token, insecure=True, workers=1, min_table_size=10),
          encoded, np.arange(len(encoded)), len(encoded), ["email"], 0.1, rec)
    order = [step for kind, step in rec.events if kind == "advance" and step in ("downloading", "exponentiating")]
    last_download = len(order) - 1 - order[::-1].index("downloading")
    # chunks are exponentiated while later ones are still arriving
    assert "exponentiating" in order[:last_download]
