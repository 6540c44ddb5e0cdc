// Studio Chat's script: what only the browser can do. The reply streams into the page as the
// console reads it from the gateway; Subscription offers the plan's models, Pay As You Go all of
// them; once a reply has ended, the conversation's cost is fetched again (its usage reaches the
// account's views a moment later). Without it, the form posts and the page comes back whole.
"use strict";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function fitModels(form) {
  const mode = form.querySelector("input[name=billing_mode]:checked");
  const select = form.querySelector("select[name=model]");
  if (!mode || !select) return;
  for (const option of select.options) {
    const allowed = mode.value === "payg" || option.dataset.inPlan === "1";
    option.disabled = !allowed;
    option.hidden = !allowed;
  }
  if (select.selectedOptions.length === 0 || select.selectedOptions[0].disabled) {
    const first = Array.from(select.options).find((option) => !option.disabled);
    if (first) select.value = first.value;
  }
}

function message(log, role, label, text) {
  const article = document.createElement("article");
  article.className = "message " + role;
  article.setAttribute("aria-label", label);
  const body = document.createElement("p");
  body.textContent = text;
  article.appendChild(body);
  log.appendChild(article);
  return body;
}

async function refreshCost(form) {
  // Until the conversation's count of calls changes (this one is counted), for at most about 20 s.
  const calls = document.getElementById("chat-cost")?.dataset.calls;
  for (const wait of [200, 300, 500, 1000, 2000, 4000, 4000, 4000, 4000]) {
    await sleep(wait);
    try {
      const response = await fetch(form.dataset.cost);
      if (!response.ok) continue;
      const holder = document.createElement("template");
      holder.innerHTML = (await response.text()).trim();
      const fresh = holder.content.firstElementChild;
      if (!fresh || fresh.dataset.calls === calls) continue;
      document.getElementById("chat-cost")?.replaceWith(fresh);
      return;
    } catch (e) {
      return;
    }
  }
}

async function send(form) {
  const data = new FormData(form);
  const log = document.getElementById("messages");
  const button = form.querySelector("button[type=submit]");
  message(log, "user", "You", data.get("message"));
  const reply = message(log, "assistant", "Assistant", "");
  const article = reply.parentElement;
  article.setAttribute("aria-busy", "true");
  button.disabled = true;
  form.querySelector("textarea[name=message]").value = "";
  try {
    const response = await fetch(form.action, { method: "POST", body: data, headers: { "x-studio-stream": "1" } });
    if (response.redirected) {
      window.location.href = response.url;
      return;
    }
    if (!response.ok) {
      article.className = "message refusal";
      article.setAttribute("aria-label", "Refused");
      article.setAttribute("role", "alert");
      reply.textContent = await response.text();
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      reply.textContent += value;
    }
  } catch (e) {
    reply.textContent += " [the answer broke off]";
  } finally {
    article.removeAttribute("aria-busy");
    button.disabled = false;
  }
  await refreshCost(form);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-chat]");
  if (!form) return;
  form.querySelectorAll("input[name=billing_mode]").forEach((input) => {
    input.addEventListener("change", () => fitModels(form));
  });
  fitModels(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(form);
  });
});
