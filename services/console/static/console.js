// The console's only script: what just the browser can do (dialogs, copy, a countdown, a
// confirmation, following a refund's status). Every page works as plain forms without it too.
"use strict";

function countdown(until) {
  let seconds = Math.max(0, Math.floor((Date.parse(until) - Date.now()) / 1000));
  const days = Math.floor(seconds / 86400); seconds %= 86400;
  const hours = Math.floor(seconds / 3600); seconds %= 3600;
  const minutes = Math.floor(seconds / 60); seconds %= 60;
  return (days ? days + "d " : "") + hours + "h " + String(minutes).padStart(2, "0") + "m " +
    String(seconds).padStart(2, "0") + "s";
}

function tick() {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    el.textContent = countdown(el.dataset.countdown);
  });
}

function localTimes() {
  // The owner's own time zone and the page's language (the server writes UTC).
  const format = new Intl.DateTimeFormat(document.documentElement.lang, { dateStyle: "medium", timeStyle: "short" });
  document.querySelectorAll("time[datetime]").forEach((el) => {
    const moment = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) el.textContent = format.format(moment);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  document.querySelectorAll("dialog[data-show-modal]").forEach((d) => d.showModal());
  document.querySelectorAll("[data-open]").forEach((button) => {
    button.addEventListener("click", () => {
      const dialog = document.getElementById(button.dataset.open);
      const from = button.closest("dialog");
      if (from) from.close();
      if (button.dataset.kind) {
        const choice = dialog.querySelector(`input[name=kind][value=${button.dataset.kind}]`);
        if (choice) choice.checked = true;
      }
      dialog.showModal();
    });
  });
  document.querySelectorAll("[data-close]").forEach((button) => {
    button.addEventListener("click", () => button.closest("dialog").close());
  });
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = button.dataset.copied || "Copied";
        button.setAttribute("aria-label", "Copied");
      } catch (e) {
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  });
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  const refresh = document.querySelector("[data-refresh]");
  if (refresh) setTimeout(() => window.location.reload(), Number(refresh.dataset.refresh) * 1000);
  tick();
  setInterval(tick, 1000);
});
