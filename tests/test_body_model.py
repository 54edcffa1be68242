"""The numpy SMPL-X model equals the smplx package (float64) on the synthetic model."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel, BodyOutput
from dpose_core.errors import BodyModelError
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES, VERTEX_JOINTS
from tests.synth_body import synthetic_smplx_arrays

torch = pytest.importorskip("torch")
smplx = pytest.importorskip("smplx")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def reference(body_model_npz):
    return smplx.SMPLX(
        str(body_model_npz), num_betas=11, use_pca=False, flat_hand_mean=True,
        dtype=torch.float64,
    )


def _random_inputs(seed, n=3):
    rng = np.random.default_rng(seed)
    aa = rng.normal(0, 0.6, (n, 55, 3))
    betas = rng.normal(0, 1.5, (n, 11))
    transl = rng.normal(0, 1.0, (n, 3))
    return aa, betas, transl


def _smplx_forward(layer, aa, betas, transl):
    """smplx.SMPLX takes axis-angle (its Rodrigues adds 1e-8 to the vector: ~1e-8 m error)."""
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    n = aa.shape[0]
    with torch.no_grad():
        out = layer(
            betas=t(betas), global_orient=t(aa[:, 0]), body_pose=t(aa[:, 1:22].reshape(n, -1)),
            jaw_pose=t(aa[:, 22]), leye_pose=t(aa[:, 23]), reye_pose=t(aa[:, 24]),
            left_hand_pose=t(aa[:, 25:40].reshape(n, -1)),
            right_hand_pose=t(aa[:, 40:55].reshape(n, -1)),
            expression=torch.zeros(n, 10, dtype=torch.float64), transl=t(transl),
            return_verts=True,
        )
    return out.vertices.numpy(), out.joints.numpy()


def _smplx_layer_forward(layer, rot, betas, transl):
    """smplx.SMPLXLayer takes rotation matrices, as D-PoSE calls it: exact comparison."""
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    n = rot.shape[0]
    with torch.no_grad():
        out = layer(
            betas=t(betas), global_orient=t(rot[:, 0:1]), body_pose=t(rot[:, 1:22]),
            jaw_pose=t(rot[:, 22:23]), leye_pose=t(rot[:, 23:24]), reye_pose=t(rot[:, 24:25]),
            left_hand_pose=t(rot[:, 25:40]), right_hand_pose=t(rot[:, 40:55]),
            expression=torch.zeros(n, 10, dtype=torch.float64), transl=t(transl),
        )
    return out.vertices.numpy(), out.joints.numpy()


@pytest.fixture(scope="module")
def reference_layer(body_model_npz):
    return smplx.SMPLXLayer(str(body_model_npz), num_betas=11, dtype=torch.float64)


def test_forward_matches_smplx_layer_rotation_matrices(reference_layer):
    # smplx rounds the file's arrays to float32; take its buffers to compare the maths exactly.
    same_arrays = BodyModel.from_arrays(
        {k: v.numpy() for k, v in reference_layer.state_dict().items()}, prefix=""
    )
    aa, betas, transl = _random_inputs(10)
    rot = axis_angle_to_matrix(aa)
    ref_v, ref_j = _smplx_layer_forward(reference_layer, rot, betas, transl)
    out = same_arrays.forward(rot, betas, transl)
    np.testing.assert_allclose(out.vertices, ref_v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.joints, ref_j, rtol=0, atol=1e-12)


def test_forward_matches_smplx_all_55_joints(model, reference):
    aa, betas, transl = _random_inputs(0)
    ref_v, ref_j = _smplx_forward(reference, aa, betas, transl)
    out = model.forward(axis_angle_to_matrix(aa), betas, transl)
    assert isinstance(out, BodyOutput)
    assert out.vertices.shape == (3, 10475, 3) and out.joints.shape == (3, 127, 3)
    np.testing.assert_allclose(out.vertices, ref_v, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.joints, ref_j, rtol=0, atol=1e-6)


def test_forward_without_pose_correctives_matches_zeroed_posedirs(model, body_model_npz):
    layer = smplx.SMPLX(str(body_model_npz), num_betas=11, use_pca=False, flat_hand_mean=True,
                        dtype=torch.float64)
    layer.posedirs.zero_()
    aa, betas, transl = _random_inputs(1, n=2)
    ref_v, ref_j = _smplx_forward(layer, aa, betas, transl)
    out = model.forward(axis_angle_to_matrix(aa), betas, transl, pose_correctives=False)
    np.testing.assert_allclose(out.vertices, ref_v, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.joints, ref_j, rtol=0, atol=1e-6)
    with_corr = model.forward(axis_angle_to_matrix(aa), betas, transl)
    assert np.max(np.abs(with_corr.vertices - out.vertices)) > 1e-4  # correctives do something


def test_22_rotations_mean_flat_hands_and_shared_betas(model, reference):
    aa, betas, transl = _random_inputs(2)
    aa[:, 22:] = 0.0
    shared = betas[0]
    ref_v, ref_j = _smplx_forward(reference, aa, np.tile(shared, (3, 1)), transl)
    out = model.forward(axis_angle_to_matrix(aa[:, :22]), shared, transl)
    np.testing.assert_allclose(out.vertices, ref_v, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.joints, ref_j, rtol=0, atol=1e-6)


def test_joints_only_skins_subset_but_gives_same_joints(model):
    aa, betas, transl = _random_inputs(3, n=4)
    rot = axis_angle_to_matrix(aa)
    full = model.forward(rot, betas, transl)
    fast = model.forward(rot, betas, transl, return_vertices=False)
    assert fast.vertices is None
    np.testing.assert_allclose(fast.joints, full.joints, atol=1e-12)
    np.testing.assert_allclose(fast.joint_world_transforms, full.joint_world_transforms)
    # vertex joints read the listed vertex ids, in the listed order
    ids = [vid for _, vid in VERTEX_JOINTS]
    np.testing.assert_allclose(full.joints[:, 55:76], full.vertices[:, ids])


def test_world_transforms_are_rigid_and_place_joints(model):
    aa, betas, transl = _random_inputs(4, n=2)
    rot = axis_angle_to_matrix(aa)
    out = model.forward(rot, betas, transl)
    tr = out.joint_world_transforms
    np.testing.assert_allclose(tr[..., :3, 3], out.joints[:, :55], atol=1e-12)
    r = tr[..., :3, :3]
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-12)
    np.testing.assert_allclose(r[:, 0], rot[:, 0])
    np.testing.assert_allclose(r[:, 1], rot[:, 0] @ rot[:, 1], atol=1e-14)
    np.testing.assert_array_equal(tr[..., 3, :], np.broadcast_to([0, 0, 0, 1.0], (2, 55, 4)))


def test_pelvis_stays_at_rest_joint_plus_transl(model):
    aa, betas, transl = _random_inputs(5, n=2)
    out = model.forward(axis_angle_to_matrix(aa), betas, transl)
    np.testing.assert_allclose(out.joints[:, 0], model.rest_joints(betas)[:, 0] + transl,
                               atol=1e-12)


def test_rest_pose_equals_shaped_vertices(model):
    betas = np.random.default_rng(6).normal(size=11)
    out = model.forward(np.broadcast_to(np.eye(3), (1, 55, 3, 3)), betas)
    np.testing.assert_allclose(out.vertices[0], model.shaped_vertices(betas), atol=1e-12)
    np.testing.assert_allclose(out.joints[0, :55], model.rest_joints(betas), atol=1e-12)
    np.testing.assert_allclose(model.rest_joints(betas),
                               model.J_regressor @ model.shaped_vertices(betas), atol=1e-12)
    assert model.rest_joints(np.zeros((4, 11))).shape == (4, 55, 3)


def test_many_frames_are_chunked_consistently(model):
    rng = np.random.default_rng(7)
    rot = axis_angle_to_matrix(rng.normal(0, 0.4, (70, 22, 3)))
    betas = rng.normal(size=11)
    out = model.forward(rot, betas, return_vertices=False)
    single = model.forward(rot[65:66], betas, return_vertices=False)
    np.testing.assert_allclose(out.joints[65], single.joints[0], atol=1e-12)


def test_from_arrays_matches_load(model, reference):
    state = {f"smpl.smplx.{k}": v for k, v in reference.state_dict().items()}
    # the checkpoint stores float32 buffers
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    from_ckpt = BodyModel.from_arrays(state)
    np.testing.assert_allclose(from_ckpt.v_template, model.v_template, atol=1e-6)
    np.testing.assert_allclose(from_ckpt.posedirs, model.posedirs, atol=1e-7)
    np.testing.assert_allclose(from_ckpt.shapedirs, model.shapedirs, atol=1e-7)
    np.testing.assert_array_equal(from_ckpt.parents, model.parents)
    np.testing.assert_array_equal(from_ckpt.faces, model.faces)
    np.testing.assert_array_equal(from_ckpt.vertex_joint_ids, model.vertex_joint_ids)
    assert from_ckpt.expr_dirs.shape == (10475, 3, 10)
    aa, betas, transl = _random_inputs(8, n=2)
    a = from_ckpt.forward(axis_angle_to_matrix(aa), betas, transl)
    b = model.forward(axis_angle_to_matrix(aa), betas, transl)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-5)
    assert from_ckpt.skinning_joint_names == JOINT_NAMES
    # numpy arrays work too, and a missing buffer is a typed error naming the key
    np_state = {k: v.numpy() for k, v in state.items()}
    BodyModel.from_arrays(np_state)
    del np_state["smpl.smplx.posedirs"]
    with pytest.raises(BodyModelError, match="posedirs"):
        BodyModel.from_arrays(np_state)


def test_load_folder_and_errors(tmp_path, body_model_npz):
    assert BodyModel.load(body_model_npz.parent).num_vertices == 10475
    with pytest.raises(BodyModelError, match="does not exist"):
        BodyModel.load(tmp_path / "missing.npz")
    with pytest.raises(BodyModelError, match="No SMPLX_NEUTRAL"):
        BodyModel.load(tmp_path)
    arrays = synthetic_smplx_arrays(seed=1)
    v10 = dict(arrays, shapedirs=arrays["shapedirs"][..., :20])  # v1.0: 10 shape + 10 expr
    np.savez(tmp_path / "v10.npz", **v10)
    with pytest.raises(BodyModelError, match="10-beta"):
        BodyModel.load(tmp_path / "v10.npz")
    bad = dict(arrays, J_regressor=arrays["J_regressor"][:24])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(BodyModelError, match="J_regressor"):
        BodyModel.load(tmp_path / "bad.npz")
    no_lmk = {k: v for k, v in arrays.items() if k != "lmk_faces_idx"}
    np.savez(tmp_path / "nolmk.npz", **no_lmk)
    with pytest.raises(BodyModelError, match="lmk_faces_idx"):
        BodyModel.load(tmp_path / "nolmk.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BodyModelError):
        BodyModel.load(tmp_path / "junk.npz")
    # A download cut short (a zip missing its end), text for numbers, NaN: clear errors.
    (tmp_path / "cut.npz").write_bytes(body_model_npz.read_bytes()[:100_000])
    with pytest.raises(BodyModelError, match="cut short"):
        BodyModel.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "text.npz", **dict(arrays, kintree_table=np.full((2, 55), "a")))
    with pytest.raises(BodyModelError, match="malformed"):
        BodyModel.load(tmp_path / "text.npz")
    nan = dict(arrays, v_template=np.full_like(arrays["v_template"], np.nan))
    np.savez(tmp_path / "nan.npz", **nan)
    with pytest.raises(BodyModelError, match="NaN"):
        BodyModel.load(tmp_path / "nan.npz")


def test_forward_rejects_bad_shapes(model):
    with pytest.raises(ValueError):
        model.forward(np.zeros((2, 21, 3, 3)), np.zeros(11))
    with pytest.raises(ValueError):
        model.forward(np.broadcast_to(np.eye(3), (2, 22, 3, 3)), np.zeros((3, 11)))
    with pytest.raises(ValueError):
        model.forward(np.broadcast_to(np.eye(3), (2, 22, 3, 3)), np.zeros(12))


def test_load_pkl_with_sparse_regressor_and_refuse_code(tmp_path, model, body_model_npz):
    import pickle

    from scipy import sparse

    arrays = dict(np.load(body_model_npz, allow_pickle=False))
    arrays["J_regressor"] = sparse.csc_matrix(arrays["J_regressor"])
    arrays["bs_style"] = "lbs"
    path = tmp_path / "SMPLX_NEUTRAL.pkl"
    with open(path, "wb") as fh:
        pickle.dump(arrays, fh, protocol=2)
    from_pkl = BodyModel.load(path)
    np.testing.assert_array_equal(from_pkl.J_regressor, model.J_regressor)
    np.testing.assert_array_equal(from_pkl.posedirs, model.posedirs)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"v_template": Evil()}, fh, protocol=2)
    with pytest.raises(BodyModelError, match="evil.pkl"):
        BodyModel.load(evil)
