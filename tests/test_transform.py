import numpy as np
import pytest

from emsrflow.transform import Similarity


def test_inverse_and_round_trips():
    t = Similarity(0.3, 2.5, (4.0, -7.0))
    points = np.array([[0.0, 0.0], [100.0, 50.0], [191.0, 191.0]])
    np.testing.assert_allclose(t.inverse().apply(t.apply(points)), points, atol=1e-9)
    back = Similarity.from_matrix(t.matrix())
    assert back.scale == pytest.approx(t.scale) and back.rotation_deg == pytest.approx(2.5)
    assert back.shift == pytest.approx(t.shift)
    assert Similarity.from_dict(t.to_dict()) == t


def test_max_displacement_of_a_shift():
    a = Similarity(0.3, 0.0, (0.0, 0.0))
    assert a.max_displacement(Similarity(0.3, 0.0, (0.3, 0.4)), (192, 192)) == pytest.approx(0.5)
