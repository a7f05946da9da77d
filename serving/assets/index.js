// GET /v1/models -> one row per served model, linking to its explorer page.
"use strict";
(async function () {
  const body = document.querySelector("#models tbody");
  try {
    const reply = await fetch("/v1/models");
    const content = await reply.json();
    if (!reply.ok) throw new Error(content.error || reply.statusText);
    for (const model of content.models) {
      const row = body.insertRow();
      const link = document.createElement("a");
      link.href = "/ui/" + encodeURIComponent(model.name);
      link.textContent = model.name;
      row.insertCell().append(link);
      row.insertCell().textContent = model.family;
      row.insertCell().textContent = model.version;
    }
  } catch (error) {
    const shown = document.getElementById("error");
    shown.textContent = "Cannot list the models: " + error.message;
    shown.hidden = false;
  }
})();
