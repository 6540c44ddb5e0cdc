// The console's only script: what just the browser can do (dialogs, copy, a countdown, a
// confirmation, following a refund's status, telling the server the owner's time zone). Every page works as plain forms without it too.
"use strict";

const UNITS = document.documentElement.lang.startsWith("zh")
  ? { d: "天 ", h: "小时 ", m: "分 ", s: "秒" } : { d: "d ", h: "h ", m: "m ", s: "s" };

function countdown(until) {
  let seconds = Math.max(0, Math.floor((Date.parse(until) - Date.now()) / 1000));
  const days = Math.floor(seconds / 86400); seconds %= 86400;
  const hours = Math.floor(seconds / 3600); seconds %= 3600;
  const minutes = Math.floor(seconds / 60); seconds %= 60;
  return (days ? days + UNITS.d : "") + hours + UNITS.h + String(minutes).padStart(2, "0") + UNITS.m +
    String(seconds).padStart(2, "0") + UNITS.s;
}

function tick() {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    el.textContent = countdown(el.dataset.countdown);
  });
}

function ownZone() {
  // The server writes times in the zone the fp_tz cookie names. Tell it the browser's; until it
  // knows (the first page), rewrite this page's times in that zone here.
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const known = document.cookie.split("; ").find((c) => c.startsWith("fp_tz="));
  if (!zone || (known && decodeURIComponent(known.slice(6)) === zone)) return;
  document.cookie = "fp_tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; samesite=lax";
  const format = new Intl.DateTimeFormat(document.documentElement.lang, { dateStyle: "medium", timeStyle: "short" });
  document.querySelectorAll("time[datetime]").forEach((el) => {
    const moment = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) el.textContent = format.format(moment);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  ownZone();
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
