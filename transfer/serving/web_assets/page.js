// The exported web page: loads model.json and model.onnx from its own folder, classifies
// dropped or chosen pictures and the live camera, and shows top-k bars.
import { openClassifier, pictureFromFile } from "./classify.js";
import { LiveCamera, cameraProblem, publishAnswer, renderAnswer } from "./live.js";

const $ = (id) => document.getElementById(id);
const TOP_K = 5;
let classifier = null, camera = null;

async function main() {
  const info = await (await fetch("model.json")).json();
  document.title = info.title || document.title;
  $("title").textContent = info.title || "Image classifier";
  $("classes").textContent = `Classes: ${info.classes.join(", ")}`;
  const model = new Uint8Array(await (await fetch(info.onnx.file)).arrayBuffer());
  classifier = await openClassifier(model, info);
  $("result").textContent = "Ready: drop a picture or start the camera.";
  $("start").disabled = false;
}

async function classifyFiles(files) {
  for (const file of files) {
    const row = document.createElement("div");
    row.className = "picture";
    const image = document.createElement("img");
    image.src = URL.createObjectURL(file);
    image.alt = file.name;
    const bars = document.createElement("div");
    bars.className = "answer";
    const name = document.createElement("strong");
    name.textContent = file.name;
    row.append(image, bars);
    $("pictures").prepend(row);
    // A picture chosen while the model is still loading waits for it, then is answered.
    bars.textContent = classifier ? "" : "Waiting for the model to load ...";
    try {
      await ready;
    } catch (error) {
      bars.textContent = `${file.name} cannot be answered: the model could not be loaded (see above).`;
      continue;
    }
    let picture;
    try {
      picture = await pictureFromFile(file, classifier.preprocessing);
    } catch (error) {
      bars.textContent = `${file.name} cannot be used: it is not a picture this browser can read; try JPEG or PNG.`;
      continue;
    }
    try {
      const answer = await classifier.classify(picture);
      bars.textContent = "";
      renderAnswer(bars, answer, TOP_K);
      bars.prepend(name);
      publishAnswer($("result"), answer, file.name);
    } catch (error) {
      bars.textContent = `${file.name} could not be classified (${error.message || error}).`;
    }
  }
}

$("files").addEventListener("change", (event) => classifyFiles([...event.target.files]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  classifyFiles([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
});

$("start").addEventListener("click", async () => {
  $("problem").textContent = "";
  camera = camera || new LiveCamera($("video"), classifier, (answer, rate) => {
    renderAnswer($("live-bars"), answer, TOP_K);
    publishAnswer($("result"), answer, "camera");
    $("rate").textContent = `${rate.toFixed(1)} pictures a second`;
  });
  camera.setMirrored($("mirror").checked);
  try {
    await camera.start($("camera").value || undefined);
  } catch (error) {
    $("problem").textContent = cameraProblem(error);
    return;
  }
  $("pause").disabled = false;
  const cameras = await LiveCamera.cameras();
  const chosen = $("camera").value;
  $("camera").replaceChildren(...cameras.map((device, index) => new Option(device.label || `Camera ${index + 1}`, device.deviceId)));
  if (chosen) $("camera").value = chosen;
  $("camera").hidden = cameras.length < 2;
});
$("camera").addEventListener("change", () => $("start").click());
$("mirror").addEventListener("change", () => camera && camera.setMirrored($("mirror").checked));
$("pause").addEventListener("click", () => {
  if (!camera) return;
  camera.setPaused(!camera.paused);
  $("pause").textContent = camera.paused ? "Resume" : "Pause";
});

const ready = main();
ready.catch((error) => {
  $("result").textContent = "";
  $("problem").textContent = `The model could not be loaded (${error.message || error}). Serve this folder over http (for example \`python -m http.server\` in it) rather than opening index.html as a file.`;
});
