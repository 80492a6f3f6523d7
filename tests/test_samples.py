import pytest

from emsrflow.errors import InputError
from emsrflow.samples import parse_voxel_size, resolve_voxel_size


def test_parse_voxel_size():
    assert parse_voxel_size("50, 15,15", where="x") == (50.0, 15.0, 15.0)
    assert parse_voxel_size("", where="x") is None
    assert parse_voxel_size(None, where="x") is None


@pytest.mark.parametrize("text", ["15,15", "a,b,c", "0,15,15", "50,-1,15"])
def test_parse_voxel_size_names_the_cell(text):
    with pytest.raises(InputError, match=r"row 2.*lr_voxel_nm"):
        parse_voxel_size(text, where="samples.tsv: row 2, column 'lr_voxel_nm'")


def test_resolve_voxel_size_prefers_the_sheet():
    assert resolve_voxel_size((50, 15, 15), (1, 1, 1), path="a.tif", column="hr_voxel_nm") == (
        50,
        15,
        15,
    )
    assert resolve_voxel_size(None, (50, 5, 5), path="a.tif", column="hr_voxel_nm") == (50, 5, 5)
    with pytest.raises(InputError, match=r"a\.tif.*hr_voxel_nm"):
        resolve_voxel_size(None, None, path="a.tif", column="hr_voxel_nm")
