// The live tail of /ui/events: new rows arrive over Server-Sent Events as HTML the
// server rendered (and escaped), newest on top. Nothing else needs script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var status = document.getElementById("tail-status");
  var rows = document.getElementById("event-rows");
  if (!status || !rows || !window.EventSource) {
    return;
  }
  var arrived = 0;
  var source = new EventSource(status.getAttribute("data-tail"));
  source.addEventListener("row", function (message) {
    rows.insertAdjacentHTML("afterbegin", message.data);
    var empty = document.getElementById("no-events");
    if (empty) {
      empty.remove();
    }
    arrived += 1;
    status.textContent = arrived + (arrived === 1 ? " new event" : " new events") +
      " arrived since the page loaded; more appear at the top as they arrive.";
  });
  source.addEventListener("error", function () {
    // EventSource reconnects by itself; say so only while it is down.
    if (source.readyState === EventSource.CONNECTING) {
      status.textContent = "Live tail reconnecting…";
    }
  });
});
