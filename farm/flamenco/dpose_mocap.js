// SPDX-License-Identifier: GPL-3.0-or-later
// Flamenco job type "D-PoSE Mocap": a long shot solved in chunks on many workers, then merged
// into one .blend (rigs, camera, keys) plus motion files. Install: see farm/README.md.
//
// Each solve task runs Blender headless on one chunk of source frames (plus the overlap before
// it, used to match people across the seam) and writes a chunk file; the merge task depends on
// all of them and runs the smoothing, gap filling, grounding and scene building once over the
// whole shot (and writes the quality report), so the result does not depend on where the
// seams fall.

const JOB_TYPE = {
  label: "D-PoSE Mocap",
  description: "Video or image folder to SMPL-X motion, solved in chunks and merged.",
  settings: [
    { key: "input", type: "string", subtype: "file_path", required: true,
      description: "Video file or image folder (a path every worker can read)" },
    { key: "output_dir", type: "string", subtype: "dir_path", required: true,
      description: "Folder for the chunk files, the merged .blend and the motion files" },
    { key: "frames", type: "string", required: true, default: "0-299",
      description: "Source frames to solve, 0-based and inclusive, one contiguous range: '0-2999'" },
    { key: "chunk_size", type: "int32", default: 200, propargs: { min: 10 },
      description: "Source frames per solve task" },
    { key: "chunk_overlap", type: "int32", default: 16, propargs: { min: 0 },
      description: "Frames each chunk also solves before its own range, to match people across seams" },
    { key: "headless_script", type: "string", subtype: "file_path", required: true,
      description: "dpose_blender/headless.py inside the D-PoSE extension on the workers" },
    { key: "checkpoint", type: "string", subtype: "file_path", default: "",
      description: "paper_arxiv.ckpt (empty: $DPOSE_CHECKPOINT or the add-on preferences on the worker)" },
    { key: "device", type: "string", default: "auto", choices: ["auto", "cpu", "cuda"],
      description: "auto uses CUDA where ONNX Runtime has it, else the CPU" },
    { key: "person_box", type: "string", default: "",
      description: "Optional x0,y0,x1,y1 in pixels: the person to follow (empty: find people)" },
    { key: "smooth", type: "float", default: 1.0, propargs: { min: 0.0 },
      description: "Smoothing strength at the merge (0 off, 1 default, 2 twice as smooth)" },
    { key: "ground", type: "string", default: "auto", choices: ["auto", "none", "off"],
      description: "auto: rigs on the floor found at Z = 0; none: Z up at the camera's level, no floor; off: the camera-frame solve (applied once to the merged shot)" },
    { key: "foot_lock", type: "float", default: 1.0, propargs: { min: 0.0, max: 1.0 },
      description: "Hold contacting heels and toes still (0 off, 1 fixed)" },
    { key: "subject_height", type: "float", default: 0.0, propargs: { min: 0.0, max: 2.8 },
      description: "The person's standing height in metres (0: the body's own)" },
    { key: "export_fbx", type: "bool", default: false, description: "Also write motion.fbx" },
    { key: "export_bvh", type: "bool", default: false, description: "Also write motion.bvh" },
    { key: "export_gltf", type: "bool", default: false,
      description: "Also write motion.glb (binary glTF)" },
    { key: "fbx_preset", type: "string", default: "blender", choices: ["blender", "unreal", "unity"],
      description: "What the FBX is for: axes, units and bones as that application reads them" },
    { key: "scene_blend", type: "string", subtype: "file_path", default: "",
      description: "Optional .blend the merge opens first, holding the character to retarget onto" },
    { key: "retarget_to", type: "string", default: "",
      description: "Optional armature in that .blend to bake the take onto; FBX, BVH and glTF then hold it" },
    { key: "bone_map", type: "string", subtype: "file_path", default: "",
      description: "Optional bone map JSON (empty: the map saved with the armature, else detected)" },
    { key: "root_motion", type: "string", default: "bone", choices: ["bone", "object", "in_place"],
      description: "With retarget_to: the travel on the root bone, on the object, or in place" },
    { key: "strict", type: "bool", default: false,
      description: "Fail a task when any frame had to be skipped or interpolated" },
  ],
};

function compileJob(job) {
  const s = job.settings;
  const range = parseContiguousRange(s.frames);
  if (s.chunk_size < 1) {
    throw "chunk_size must be at least 1";
  }
  if (s.chunk_overlap < 0) {
    throw "chunk_overlap must not be negative";
  }
  const chunkDir = path.join(s.output_dir, "chunks");
  const common = solveOptions(s);
  const solveTasks = [];
  const chunkFiles = [];
  for (const chunk of frameChunker(s.frames, s.chunk_size)) {
    const [first, last] = parseContiguousRange(chunk);
    const chunkFile = path.join(chunkDir, `chunk_${pad(first)}.npz`);
    const warmUp = Math.min(s.chunk_overlap, first - range[0]);
    const task = author.Task(`solve-${chunk}`, "blender");
    task.addCommand(author.Command("blender-render", {
      exe: "{blender}",
      exeArgs: "{blenderArgs}",
      argsBefore: [],
      blendfile: "",
      args: ["--python", s.headless_script, "--",
             "--input", s.input, "--start", String(first), "--end", String(last + 1),
             "--chunk-overlap", String(warmUp), "--chunk-output", chunkFile,
             "--progress", "flamenco"].concat(common),
    }, frameCount(chunk) + warmUp));
    solveTasks.push(task);
    chunkFiles.push(chunkFile);
    job.addTask(task);
  }

  const merge = author.Task("merge", "blender");
  const outputs = ["--output", path.join(s.output_dir, "motion.blend"),
                   "--npz", path.join(s.output_dir, "motion.npz"),
                   "--report", path.join(s.output_dir, "report.json")];
  if (s.export_fbx) {
    outputs.push("--fbx", path.join(s.output_dir, "motion.fbx"),
                 "--fbx-preset", s.fbx_preset || "blender");
  }
  if (s.export_bvh) outputs.push("--bvh", path.join(s.output_dir, "motion.bvh"));
  if (s.export_gltf) outputs.push("--gltf", path.join(s.output_dir, "motion.glb"));
  const mergeArgs = ["--python", s.headless_script, "--", "--merge"].concat(chunkFiles,
    ["--frames", `${range[0]}-${range[1]}`, "--smooth", String(s.smooth),
     "--progress", "flamenco"], outputs);
  if (s.checkpoint) mergeArgs.push("--checkpoint", s.checkpoint);  // the rig's body model
  if (s.strict) mergeArgs.push("--strict");
  if (s.retarget_to) {  // the exports then hold the retargeted character
    mergeArgs.push("--retarget-to", s.retarget_to, "--root-motion", s.root_motion || "bone");
    if (s.bone_map) mergeArgs.push("--bone-map", s.bone_map);
  }
  mergeArgs.push(...groundOptions(s));
  merge.addCommand(author.Command("blender-render", {
    exe: "{blender}",
    exeArgs: "{blenderArgs}",
    argsBefore: [],
    blendfile: s.scene_blend || "",  // opened first: the character to retarget onto lives there
    args: mergeArgs,
  }, 1));
  for (const t of solveTasks) {
    merge.addDependency(t);
  }
  job.addTask(merge);
}

// The refine stage runs once, on the merged shot (a chunk holds raw solves).
function groundOptions(s) {
  const ground = s.ground || "auto";
  if (!["auto", "none", "off"].includes(ground)) {
    throw `ground must be auto, none or off, got "${ground}"`;
  }
  const lock = s.foot_lock === undefined ? 1.0 : Number(s.foot_lock);
  if (!(lock >= 0 && lock <= 1)) {
    throw `foot_lock must be between 0 and 1, got ${s.foot_lock}`;
  }
  const args = ["--ground", ground, "--foot-lock", String(lock)];
  if (s.subject_height) args.push("--subject-height", String(s.subject_height));
  return args;
}

// Options every solve task shares; they are recorded in each chunk, and the merge refuses
// chunks solved with different ones.
function solveOptions(s) {
  const args = ["--device", s.device];
  if (s.checkpoint) args.push("--checkpoint", s.checkpoint);
  if (s.person_box) args.push(`--bbox=${s.person_box}`);  // "=": a box may start with "-"
  if (s.strict) args.push("--strict");
  return args;
}

function parseContiguousRange(text) {
  const m = /^\s*(\d+)\s*(?:(?:-|\.\.)\s*(\d+))?\s*$/.exec(String(text));
  if (!m) {
    throw `frames must be one contiguous range like 0-2999, got "${text}"`;
  }
  const first = parseInt(m[1], 10);
  const last = m[2] === undefined ? first : parseInt(m[2], 10);
  if (last < first) {
    throw `frames: the last frame comes before the first in "${text}"`;
  }
  return [first, last];
}

function pad(n) {
  return String(n).padStart(6, "0");
}
