// The Streamlit side of the live camera view (ui/live_view.py declares it). The page sends the
// model's bytes once; later reruns pass only its id (and model.json). A view drawn anew that gets
// an id without the bytes asks for them, and the page sends them on its next run. Frames stay
// here. What goes back: one PNG frame when the visitor asks to explain it (bytes), or the request
// for the model (a small object).
import { openClassifier } from "./classify.js";
import { LiveCamera, cameraProblem, publishAnswer, renderAnswer } from "./live.js";

const $ = (id) => document.getElementById(id);
let classifier = null, camera = null, modelId = null, asked = null, topK = 3, explainCount = 0;

function send(type, data) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
}

function fitHeight() {
  send("streamlit:setFrameHeight", { height: document.documentElement.scrollHeight });
}

function showProblem(text) {
  $("problem").textContent = text;
  fitHeight();
}

async function onRender(args) {
  topK = args.top_k || 3;
  $("explain").hidden = !args.explain;
  if (args.model_id === modelId) return;
  if (!args.model) {
    askForModel(args.model_id);
    return;
  }
  modelId = args.model_id;
  if (camera) camera.stop();
  try {
    classifier = await openClassifier(args.model, args.info);
  } catch (error) {
    $("result").textContent = "";
    showProblem(`The model could not be started in this browser (${error.message || error}); use the Pictures tab instead.`);
    return;
  }
  camera = new LiveCamera($("video"), classifier, (answer, rate) => {
    publishAnswer($("result"), answer, "camera");
    renderAnswer($("bars"), answer, topK);
    $("rate").textContent = `${rate.toFixed(1)} pictures a second`;
    $("explain").disabled = false;
    fitHeight();
  });
  camera.setMirrored($("mirror").checked);
  $("result").textContent = "Ready: press Start camera.";
  if (args.autostart) await startCamera();
  fitHeight();
}

/** Asks the page for the model this view lacks, once per model; the random id makes the request
 * news to the page even if an earlier request is still the component's value. */
function askForModel(id) {
  if (asked === id) return;
  asked = id;
  const value = { model_id: id, request: crypto.randomUUID ? crypto.randomUUID() : String(Math.random()) };
  send("streamlit:setComponentValue", { value, dataType: "json" });
}

async function startCamera() {
  if (!camera) return;
  showProblem("");
  try {
    await camera.start($("camera").value || undefined);
  } catch (error) {
    showProblem(cameraProblem(error));
    return;
  }
  $("pause").disabled = false;
  $("pause").textContent = "Pause";
  $("start").textContent = "Restart camera";
  await listCameras();
}

async function listCameras() {
  const chosen = $("camera").value;
  const cameras = await LiveCamera.cameras();
  $("camera").replaceChildren(...cameras.map((device, index) => {
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `Camera ${index + 1}`;
    return option;
  }));
  if (chosen) $("camera").value = chosen;
  $("camera").hidden = cameras.length < 2;
}

$("start").addEventListener("click", startCamera);
$("camera").addEventListener("change", startCamera);
$("mirror").addEventListener("change", () => camera && camera.setMirrored($("mirror").checked));
$("pause").addEventListener("click", () => {
  if (!camera) return;
  const pausing = !camera.paused;
  camera.setPaused(pausing);
  $("pause").textContent = pausing ? "Resume" : "Pause";
  if (pausing) $("rate").textContent = "paused";
});
$("explain").addEventListener("click", async () => {
  const blob = camera && await camera.frameBlob();
  if (!blob) return;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  explainCount += 1;
  // A counter in front makes every click a new value, even for the same frame.
  const value = new Uint8Array(bytes.length + 4);
  new DataView(value.buffer).setUint32(0, explainCount);
  value.set(bytes, 4);
  send("streamlit:setComponentValue", { value, dataType: "bytes" });
});

window.addEventListener("message", (event) => {
  if (event.data && event.data.type === "streamlit:render") onRender(event.data.args);
});
new ResizeObserver(fitHeight).observe(document.body);
send("streamlit:componentReady", { apiVersion: 1 });
