// adeline-trace dashboard (docs/dashboard.md). Everything is drawn here on
// canvases; data comes from this agent only: the push stream /api/stream
// (one `update` event per second) and, once on load, /api/history.
'use strict';

(() => {
  // How much of the past the page keeps in memory (the longest range + 1 min).
  const KEEP_MS = 3660 * 1000;
  // A live point covers the 1 s window that ends at its time.
  const LIVE_SPAN_MS = 1000;
  // After this long without an update the page says the data is stale.
  const STALE_MS = 3500;
  // p99 growth at least this large is shown in the bottleneck line.
  const GROWTH_SHOWN = 1.5;
  const PALETTE = [
    '#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948',
    '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac', '#1f77b4', '#17becf',
  ];
  const FONT = '11px system-ui, "DejaVu Sans", sans-serif';
  // Spacing of time labels (ms).
  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600].map((s) => s * 1000);
  // The charts span the range chosen, or less while there is less data (but
  // at least this).
  const MIN_SPAN_MS = 60e3;

  const st = {
    // The ring, oldest first: {t (ms), span (ms), fps, drops, dropsRate,
    // stages: {name: {count, p50, p95, p99, share}}}.
    points: [],
    stages: [], // stage names in plan order
    root: null, // frame-root stage
    selected: null,
    userSelected: false,
    rangeS: 300,
    last: null, // the latest update
    lastAt: 0, // Date.now() when it arrived
    historyAsked: false,
    seen: new Map(), // rule -> alert event listed by the previous update
    ended: [], // {ev, at}: firing alerts the agent no longer lists
    drawPending: false,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  // ---------------------------------------------------------------- format

  function sig3(v) {
    return v >= 999.5 ? v.toFixed(0) : v.toPrecision(3);
  }

  // Nanoseconds in human units, 3 significant figures; '–' for no data.
  function fmtNs(ns) {
    if (ns == null || !isFinite(ns)) return '–';
    if (ns < 999.5) return Math.round(ns) + ' ns';
    if (ns < 999.5e3) return sig3(ns / 1e3) + ' µs';
    if (ns < 999.5e6) return sig3(ns / 1e6) + ' ms';
    return sig3(ns / 1e9) + ' s';
  }

  // Axis labels: as fmtNs without trailing zeros.
  function fmtNsAxis(ns) {
    if (ns === 0) return '0';
    const s = fmtNs(ns);
    return s.replace(/^(\d+)\.0+ /, '$1 ').replace(/^(\d+\.\d*?)0+ /, '$1 ');
  }

  function fmtCount(n) {
    return n == null ? '–' : Math.round(n).toLocaleString('en-US');
  }

  function fmtRate(r) {
    if (r == null || !isFinite(r)) return '–';
    return r >= 100 ? r.toFixed(0) : r.toFixed(1);
  }

  function fmtPct(x) {
    return x == null || !isFinite(x) ? '–' : (x * 100).toFixed(1) + '%';
  }

  function fmtClock(ms, seconds) {
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, '0');
    const hm = two(d.getHours()) + ':' + two(d.getMinutes());
    return seconds === false ? hm : hm + ':' + two(d.getSeconds());
  }

  function fmtAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  // An alert's value or threshold, in the unit of its rule's metric.
  function fmtAlertValue(rule, v) {
    if (v == null || !isFinite(v)) return '–';
    const r = String(rule).trim();
    if (/^(p\d+|mean|min|max)\s*\(/.test(r)) return fmtNs(v);
    if (/^share\s*\(/.test(r)) return fmtPct(v);
    return Number(v.toPrecision(4)).toString();
  }

  // ---------------------------------------------------------------- data

  const dataOrNull = (count, v) => (count > 0 && isFinite(v) ? v : null);

  function pointFromSnapshot(s) {
    const stages = {};
    for (const x of s.stages || []) {
      stages[x.stage] = {
        count: x.count,
        p50: dataOrNull(x.count, x.p50_ns),
        p95: dataOrNull(x.count, x.p95_ns),
        p99: dataOrNull(x.count, x.p99_ns),
        share: x.frame_share == null ? null : x.frame_share,
      };
    }
    return {
      t: s.ts_ns / 1e6,
      span: LIVE_SPAN_MS,
      fps: s.frames ? s.frames.fps : null,
      drops: s.drops,
      dropsRate: null,
      stages,
    };
  }

  function trimRing() {
    const pts = st.points;
    if (!pts.length) return;
    const oldest = pts[pts.length - 1].t - KEEP_MS;
    let i = 0;
    while (i < pts.length && pts[i].t < oldest) i++;
    if (i) pts.splice(0, i);
  }

  function pushPoint(p) {
    const pts = st.points;
    const prev = pts[pts.length - 1];
    if (prev && prev.drops != null && p.t > prev.t) {
      // drops is a run-wide counter; a restarted agent starts it again at 0.
      p.dropsRate = Math.max(0, p.drops - prev.drops) / ((p.t - prev.t) / 1000);
    }
    if (prev && p.t <= prev.t) pts[pts.length - 1] = p;
    else pts.push(p);
    trimRing();
  }

  function onUpdate(u) {
    const snaps = u && u.snapshots;
    const s1 = snaps && snaps['1s'];
    const s10 = snaps && snaps['10s'];
    if (!s1 || !s10) return;
    const prev = st.last;
    st.last = u;
    st.lastAt = Date.now();
    st.root = s1.frames ? s1.frames.root : null;
    const names = (s1.stages || []).map((s) => s.stage);
    const changed = names.join('\n') !== st.stages.join('\n');
    st.stages = names;
    pushPoint(pointFromSnapshot(s1));

    const top = s10.bottleneck && s10.bottleneck.top_self_share;
    const bottleneck = top ? top.stage : null;
    if (!st.userSelected || !names.includes(st.selected)) {
      st.userSelected = false;
      st.selected = defaultStage(s1, bottleneck);
    }
    if (changed) buildStageControls();
    renderHeader(s1, s10, bottleneck);
    renderKpis(s1, prev);
    renderStages(s1, bottleneck);
    renderGauges(s10);
    renderAlerts(Array.isArray(u.alerts) ? u.alerts : []);
    scheduleDraw();
    if (!st.historyAsked) {
      st.historyAsked = true;
      loadHistory();
    }
  }

  // The bottleneck, else the stage with the slowest p99, else the first.
  function defaultStage(s1, bottleneck) {
    if (bottleneck) return bottleneck;
    let best = null;
    for (const s of s1.stages || []) {
      if (s.count > 0 && (!best || s.p99_ns > best.p99_ns)) best = s;
    }
    if (best) return best.stage;
    return st.stages.length ? st.stages[0] : null;
  }

  // ---------------------------------------------------------------- history

  // A number from the first of `values` that is one (numbers or numeric strings).
  function num(...values) {
    for (const v of values) {
      if (typeof v === 'number' && isFinite(v)) return v;
      if (typeof v === 'string' && v.trim() !== '' && isFinite(Number(v))) return Number(v);
    }
    return null;
  }

  // The rows of a /api/history answer: an array, or the first array in an object.
  function historyRows(body) {
    if (Array.isArray(body)) return body;
    if (body && typeof body === 'object') {
      for (const k of ['rows', 'history', 'points', 'data']) {
        if (Array.isArray(body[k])) return body[k];
      }
      for (const v of Object.values(body)) if (Array.isArray(v)) return v;
    }
    return [];
  }

  // Rows (one per stage per interval) -> points, oldest first.
  function historyPoints(rows) {
    const byT = new Map();
    for (const r of rows) {
      if (!r || typeof r !== 'object' || typeof r.stage !== 'string') continue;
      const tNs = num(r.ts_ns, r.ts, r.t_ns, r.time_ns);
      if (tNs == null) continue;
      const t = tNs / 1e6;
      let p = byT.get(t);
      if (!p) {
        p = { t, span: null, fps: null, drops: null, dropsRate: null, stages: {} };
        byT.set(t, p);
      }
      const count = num(r.count, r.calls);
      p.stages[r.stage] = {
        count,
        p50: dataOrNull(count, num(r.p50_ns, r.p50)),
        p95: dataOrNull(count, num(r.p95_ns, r.p95)),
        p99: dataOrNull(count, num(r.p99_ns, r.p99)),
        share: num(r.frame_share),
        self: num(r.self_ns),
        total: num(r.total_ns),
      };
      const span = num(r.interval_ns, r.window_ns, r.span_ns);
      if (span) p.span = span / 1e6;
      const fps = num(r.fps);
      if (fps != null) p.fps = fps;
    }
    const pts = [...byT.values()].sort((a, b) => a.t - b.t);
    pts.forEach((p, i) => {
      if (p.span == null) {
        const next = pts[i + 1];
        const prev = pts[i - 1];
        p.span = prev ? p.t - prev.t : next ? next.t - p.t : 10000;
      }
      // Rows without fps/frame_share: derive them from the frame-root stage.
      const root = st.root ? p.stages[st.root] : null;
      if (!root) return;
      if (p.fps == null && root.count != null && p.span > 0) p.fps = root.count / (p.span / 1000);
      if (Object.values(p.stages).some((s) => s.share != null)) return;
      // Shares: self time / frame time (the root's total, else all self times).
      let denom = root.total;
      if (!denom) {
        denom = 0;
        for (const s of Object.values(p.stages)) denom += s.self || 0;
      }
      if (denom > 0) {
        for (const s of Object.values(p.stages)) {
          if (s.self != null) s.share = s.self / denom;
        }
      }
    });
    return pts;
  }

  async function loadHistory() {
    let body;
    try {
      const res = await fetch('/api/history?since=1h', { headers: { Accept: 'application/json' } });
      if (res.status !== 200) return; // no history kept: live data only
      body = await res.json();
    } catch (e) {
      return;
    }
    const first = st.points.length ? st.points[0].t : Infinity;
    const older = historyPoints(historyRows(body)).filter((p) => p.t < first - 500);
    if (!older.length) return;
    st.points = older.concat(st.points);
    trimRing();
    const note = $('history-note');
    note.textContent = 'prefilled ' + fmtAge(first === Infinity ? 0 : first - older[0].t) + ' from history';
    note.title = older.length + ' intervals from /api/history, before this page connected';
    note.dataset.intervals = String(older.length);
    note.hidden = false;
    scheduleDraw();
  }

  // ---------------------------------------------------------------- panels

  function renderHeader(s1, s10, bottleneck) {
    const line = $('bottleneck');
    line.textContent = '';
    line.append('bottleneck: ');
    if (!s1.frames) {
      line.append(el('span', 'muted', 'no frame stage (run with --frame-stage NAME)'));
    } else if (bottleneck) {
      line.append(el('b', null, bottleneck));
      const share = s10.bottleneck.top_self_share.share;
      line.append(' ' + fmtPct(share) + ' of frame time (10 s)');
    } else {
      line.append(el('span', 'muted', 'no frames in the last 10 s'));
    }
    const growths = [[s1, '1 s'], [s10, '10 s']]
      .map(([s, w]) => [s.bottleneck && s.bottleneck.p99_growth, w])
      .filter(([g]) => g && g.ratio >= GROWTH_SHOWN)
      .sort((a, b) => b[0].ratio - a[0].ratio);
    line.append(' · p99 growth: ');
    if (growths.length) {
      const [g, w] = growths[0];
      line.append(el('span', 'grow', g.stage + ' ×' + g.ratio.toFixed(1)));
      line.append(' (' + fmtNs(g.earlier_p99_ns) + ' → ' + fmtNs(g.p99_ns) + ', ' + w + ')');
    } else {
      line.append(el('span', 'muted', 'none'));
    }
    $('updated').textContent = 'updated ' + fmtClock(s1.ts_ns / 1e6);
  }

  // The stage whose memory grows fastest, when it grows faster than a bare
  // leak() rule's threshold (1 MiB/min): alloc mode's outstanding bytes,
  // else the resident bytes charged to each stage (docs/memory.md).
  const GROWING_BYTES_PER_S = 1048576 / 60;
  function fastestGrowing(s) {
    const rows = s.alloc ? s.alloc.stages : (s.stage_memory || []);
    let best = null;
    for (const r of rows) {
      const g = r.growth_bytes_per_s;
      if (g != null && g > GROWING_BYTES_PER_S && (!best || g > best.g)) {
        best = { stage: r.stage, g };
      }
    }
    return best;
  }

  // RSS and growth of the traced process(es), summed over pids; the 1 s
  // snapshot's growth is fitted over the last 10 s (docs/api.md).
  function renderMemory(memory, growing) {
    const rss = memory.reduce((a, m) => a + m.rss_bytes, 0);
    const grow = memory.filter((m) => m.growth_bytes_per_s != null);
    const g = grow.reduce((a, m) => a + m.growth_bytes_per_s, 0);
    $('memory-rss').textContent = memory.length ? (rss / 1e6).toFixed(1) + ' MB' : '–';
    $('memory-growth').textContent = grow.length
      ? (g >= 0 ? '+' : '') + (g * 60 / 1e6).toFixed(1) + ' MB/min' : '–';
    const pids = memory.length === 1 ? 'pid ' + memory[0].pid
      : memory.length > 1 ? memory.length + ' processes' : '';
    // A growing stage takes the place of the pid (kept in the tooltip).
    const el = $('memory-pids');
    el.title = pids;
    el.textContent = growing
      ? growing.stage + ' +' + (growing.g * 60 / 1e6).toFixed(0) + ' MB/min' : pids;
  }

  function renderKpis(s1, prev) {
    const f = s1.frames;
    $('fps').textContent = f ? f.fps.toFixed(1) : '–';
    $('frame-p50').textContent = f ? fmtNs(dataOrNull(f.count, f.p50_ns)) : '–';
    $('frame-p99').textContent = f ? fmtNs(dataOrNull(f.count, f.p99_ns)) : '–';
    $('drops').textContent = fmtCount(s1.drops);
    const pts = st.points;
    const now = pts[pts.length - 1];
    const ago = pts.find((p) => p.drops != null && p.t >= now.t - 10500);
    const recent = ago ? Math.max(0, s1.drops - ago.drops) : 0;
    $('drops-recent').textContent = recent > 0 ? '+' + fmtCount(recent) + ' in 10 s' : '';
    $('drops').parentElement.classList.toggle('bad', recent > 0);
    $('events').textContent = fmtCount(s1.events);
    const p1 = prev && prev.snapshots['1s'];
    if (p1 && s1.ts_ns > p1.ts_ns && s1.events >= p1.events) {
      const rate = (s1.events - p1.events) / ((s1.ts_ns - p1.ts_ns) / 1e9);
      $('events-rate').textContent = fmtCount(rate) + '/s';
    }
    renderMemory(s1.memory || [], fastestGrowing(s1));
    const sel = (s1.stages || []).find((s) => s.stage === st.selected);
    $('sel-name').textContent = st.selected || 'stage';
    for (const q of ['p50', 'p95', 'p99']) {
      $('sel-' + q).textContent = sel ? fmtNs(dataOrNull(sel.count, sel[q + '_ns'])) : '–';
    }
    const firing = (st.last.alerts || []).filter((a) => a.state === 'firing').length;
    document.title = (firing ? '(' + firing + ' firing) ' : '') + 'adeline-trace' +
      (f ? ' · ' + f.fps.toFixed(1) + ' fps' : '');
  }

  function color(name) {
    const i = st.stages.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function buildStageControls() {
    const menu = $('stage-select');
    menu.textContent = '';
    for (const name of st.stages) {
      const o = el('option', null, name);
      o.value = name;
      menu.append(o);
    }
    const body = $('stages').tBodies[0];
    body.textContent = '';
    for (const name of st.stages) {
      const tr = el('tr');
      tr.dataset.stage = name;
      const sw = el('span', 'swatch');
      sw.style.background = color(name);
      const c0 = el('td', 'name');
      c0.append(sw, ' ' + name);
      tr.append(c0);
      for (const cls of ['rate', 'p50', 'p95', 'p99', 'share']) tr.append(el('td', cls, '–'));
      tr.title = 'show ' + name + ' in the latency chart';
      tr.addEventListener('click', () => select(name));
      body.append(tr);
    }
  }

  function select(name) {
    st.selected = name;
    st.userSelected = true;
    loadProfile();
    if (st.last) {
      const s1 = st.last.snapshots['1s'];
      const top = st.last.snapshots['10s'].bottleneck.top_self_share;
      renderKpis(s1, null);
      renderStages(s1, top ? top.stage : null);
    }
    scheduleDraw();
  }

  function renderStages(s1, bottleneck) {
    const menu = $('stage-select');
    for (const o of menu.options) {
      o.textContent = o.value + (o.value === bottleneck ? ' (bottleneck)' : '');
    }
    if (st.selected != null) menu.value = st.selected;
    $('latency-title').textContent = 'latency of ' + (st.selected || '–');
    const byName = new Map((s1.stages || []).map((s) => [s.stage, s]));
    for (const tr of $('stages').tBodies[0].rows) {
      const s = byName.get(tr.dataset.stage);
      if (!s) continue;
      const cell = (cls) => tr.querySelector('td.' + cls);
      cell('rate').textContent = fmtRate(s.rate_hz);
      cell('p50').textContent = fmtNs(dataOrNull(s.count, s.p50_ns));
      cell('p95').textContent = fmtNs(dataOrNull(s.count, s.p95_ns));
      cell('p99').textContent = fmtNs(dataOrNull(s.count, s.p99_ns));
      cell('share').textContent = fmtPct(s.frame_share);
      tr.classList.toggle('selected', s.stage === st.selected);
      tr.classList.toggle('bottleneck', s.stage === bottleneck);
      tr.classList.toggle('idle', !(s.count > 0));
    }
  }

  function renderGauges(s10) {
    const box = $('gauges');
    const gauges = s10.gauges || [];
    box.hidden = gauges.length === 0;
    box.textContent = '';
    if (!gauges.length) return;
    box.append(el('b', null, 'gauges '), el('span', 'muted', '10 s: last (min..max)'), el('br'));
    for (const g of gauges) {
      const text = g.last == null ? g.gauge + ' –' : g.gauge + ' ' + g.last + ' (' + g.min + '..' + g.max + ')';
      box.append(el('span', null, text));
    }
  }

  function alertItem(ev, cls, label) {
    const li = el('li', cls);
    li.dataset.rule = ev.rule;
    li.append(el('span', 'state', label), ' ', el('span', 'rule', ev.rule));
    const parts = [
      'value ' + fmtAlertValue(ev.rule, ev.value),
      'threshold ' + fmtAlertValue(ev.rule, ev.threshold),
    ];
    if (cls === 'firing') {
      parts.push('since ' + fmtClock(ev.since_ns / 1e6) + ' (' + fmtAge(Date.now() - ev.since_ns / 1e6) + ')');
    } else if (cls === 'resolved') {
      parts.push('resolved ' + fmtClock(ev.ts_ns / 1e6));
    }
    li.append(el('div', 'detail', parts.join(' · ')));
    if (ev.profile) {
      // The stage's profile after the alert against before it (an SVG).
      const a = el('a', 'profile', 'profile: what changed');
      a.href = ev.profile;
      a.target = '_blank';
      a.rel = 'noopener';
      li.querySelector('.detail').append(a);
    }
    return li;
  }

  // ---------------------------------------------------------------- profile

  const PROFILE_EVERY_MS = 10000;
  const PROFILE_SECONDS = 30;

  // The selected stage's flame graph from /api/profile (404: the agent
  // does not profile; the panel says so and stops asking).
  async function loadProfile() {
    const name = st.selected;
    if (!name || st.noProfile) return;
    const url = '/api/profile?format=svg&seconds=' + PROFILE_SECONDS + '&stage=' + encodeURIComponent(name);
    $('profile-title').textContent = 'profile of ' + name;
    $('profile-link').href = url;
    try {
      const r = await fetch(url, { cache: 'no-store' });
      if (r.status === 404) {
        const body = await r.json().catch(() => ({}));
        if ((body.error || '').includes('does not profile')) st.noProfile = true;
        $('profile-note').textContent = body.error || 'no profile';
        $('profile-note').hidden = false;
        $('flame').hidden = true;
        return;
      }
      if (!r.ok) return;
      const blob = await r.blob();
      const old = $('flame').src;
      $('flame').src = URL.createObjectURL(blob);
      if (old && old.startsWith('blob:')) URL.revokeObjectURL(old);
      $('flame').hidden = false;
      $('flame').dataset.stage = name;
      $('profile-note').hidden = true;
    } catch (e) {
      // The agent is gone: the stream's state says so.
    }
  }

  function renderAlerts(list) {
    const listed = new Set(list.map((a) => a.rule));
    for (const [rule, ev] of st.seen) {
      if (!listed.has(rule) && ev.state === 'firing') st.ended.unshift({ ev, at: Date.now() });
    }
    st.ended = st.ended.filter((e) => !listed.has(e.ev.rule)).slice(0, 5);
    st.seen = new Map(list.map((a) => [a.rule, a]));

    const firing = list.filter((a) => a.state === 'firing').reverse();
    const resolved = list.filter((a) => a.state !== 'firing').reverse();
    const ul = $('alerts');
    ul.textContent = '';
    for (const a of firing) ul.append(alertItem(a, 'firing', 'firing'));
    for (const a of resolved) ul.append(alertItem(a, 'resolved', 'resolved'));
    for (const e of st.ended) {
      const li = alertItem(e.ev, 'gone', 'ended');
      li.querySelector('.detail').append(' · not firing since ' + fmtClock(e.at));
      ul.append(li);
    }
    if (!ul.children.length) ul.append(el('li', 'none', 'no alerts firing'));
    const n = firing.length;
    $('alerts-count').textContent = n ? n + ' firing' : '';
    $('alerts-panel').classList.toggle('has-firing', n > 0);
    const badge = $('firing-badge');
    badge.hidden = n === 0;
    badge.textContent = n === 1 ? '1 alert firing' : n + ' alerts firing';
  }

  // ---------------------------------------------------------------- charts

  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }

  // Axes and grid of a time chart; returns the scales.
  function frame(canvas, o) {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const W = Math.max(1, Math.round(r.width * dpr));
    const H = Math.max(1, Math.round(r.height * dpr));
    if (canvas.width !== W || canvas.height !== H) {
      canvas.width = W;
      canvas.height = H;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const w = r.width;
    const h = r.height;
    ctx.clearRect(0, 0, w, h);
    const m = { l: 56, r: o.right || 12, t: 8, b: 20 };
    const pw = Math.max(10, w - m.l - m.r);
    const ph = Math.max(10, h - m.t - m.b);
    const x = (t) => m.l + ((t - o.tMin) / (o.tMax - o.tMin)) * pw;
    const y = (v) => m.t + ph - (v / o.yMax) * ph;
    ctx.font = FONT;
    ctx.lineWidth = 1;
    ctx.strokeStyle = '#e6e8ec';
    ctx.fillStyle = '#6b7384';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let v = 0; v <= o.yMax * 1.0001; v += o.yStep) {
      const Y = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(m.l, Y);
      ctx.lineTo(m.l + pw, Y);
      ctx.stroke();
      ctx.fillText(o.yFmt(v), m.l - 5, Y);
    }
    // About one time label per 90 px, on round clock times.
    const want = ((o.tMax - o.tMin) / pw) * 90;
    const tStep = TIME_STEPS.find((s) => s >= want) || TIME_STEPS[TIME_STEPS.length - 1];
    const tz = new Date(o.tMax).getTimezoneOffset() * 60e3;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let t = Math.ceil((o.tMin - tz) / tStep) * tStep + tz; t <= o.tMax; t += tStep) {
      const X = Math.round(x(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(X, m.t);
      ctx.lineTo(X, m.t + ph);
      ctx.stroke();
      ctx.fillText(fmtClock(t, tStep < 60e3), X, m.t + ph + 4);
    }
    ctx.strokeStyle = '#c3c8d1';
    ctx.strokeRect(m.l + 0.5, m.t + 0.5, pw - 1, ph - 1);
    return { ctx, x, y, m, pw, ph, w, h };
  }

  function clip(c) {
    c.ctx.save();
    c.ctx.beginPath();
    c.ctx.rect(c.m.l, c.m.t, c.pw, c.ph);
    c.ctx.clip();
  }

  function message(c, text) {
    c.ctx.fillStyle = '#6b7384';
    c.ctx.textAlign = 'center';
    c.ctx.textBaseline = 'middle';
    c.ctx.font = '13px system-ui, "DejaVu Sans", sans-serif';
    c.ctx.fillText(text, c.m.l + c.pw / 2, c.m.t + c.ph / 2);
  }

  const isGap = (a, b) => b.t - a.t > 2.5 * Math.max(a.span, b.span) + 500;

  function line(c, pts, get, colour, width) {
    const ctx = c.ctx;
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.lineJoin = 'round';
    ctx.beginPath();
    let pen = false;
    let prev = null;
    for (const p of pts) {
      const v = get(p);
      if (v == null || !isFinite(v)) {
        pen = false;
        prev = p;
        continue;
      }
      if (prev && isGap(prev, p)) pen = false;
      const X = c.x(p.t);
      const Y = c.y(v);
      if (pen) ctx.lineTo(X, Y);
      else {
        ctx.moveTo(X, Y);
        ctx.lineTo(X + 0.01, Y); // a lone point still shows (round cap)
      }
      pen = true;
      prev = p;
    }
    ctx.lineCap = 'round';
    ctx.stroke();
  }

  function visible() {
    const pts = st.points;
    const tMax = pts.length ? pts[pts.length - 1].t : Date.now();
    const have = pts.length ? tMax - (pts[0].t - pts[0].span) : 0;
    const tMin = tMax - Math.min(st.rangeS * 1000, Math.max(MIN_SPAN_MS, have));
    return { pts: pts.filter((p) => p.t >= tMin - 60e3), tMin, tMax };
  }

  function drawLatency(v) {
    const name = st.selected;
    const of = (q) => (p) => (p.stages[name] ? p.stages[name][q] : null);
    let max = 0;
    for (const p of v.pts) if (p.t >= v.tMin) max = Math.max(max, of('p99')(p) || 0, of('p95')(p) || 0);
    const yStep = niceStep(Math.max(max * 1.1, 1000) / 4);
    const c = frame($('latency-chart'), {
      tMin: v.tMin, tMax: v.tMax,
      yMax: Math.ceil(Math.max(max * 1.1, 1000) / yStep) * yStep, yStep, yFmt: fmtNsAxis,
    });
    if (!max) {
      message(c, name ? 'no calls of ' + name + ' in this range' : 'waiting for data');
      return;
    }
    clip(c);
    line(c, v.pts, of('p50'), '#2458c6', 1.6);
    line(c, v.pts, of('p95'), '#e08a00', 1.6);
    line(c, v.pts, of('p99'), '#c62828', 1.6);
    c.ctx.restore();
  }

  function drawFps(v) {
    let max = 0;
    let dmax = 0;
    for (const p of v.pts) {
      if (p.t < v.tMin) continue;
      if (p.fps != null) max = Math.max(max, p.fps);
      if (p.dropsRate != null) dmax = Math.max(dmax, p.dropsRate);
    }
    const top = Math.max(max * 1.15, 1);
    const yStep = niceStep(top / 4);
    const c = frame($('fps-chart'), {
      tMin: v.tMin, tMax: v.tMax, right: 44,
      yMax: Math.ceil(top / yStep) * yStep, yStep, yFmt: (x) => String(Number(x.toPrecision(3))),
    });
    const ctx = c.ctx;
    if (!st.root && !v.pts.some((p) => p.fps != null)) {
      message(c, 'no frame stage (run with --frame-stage NAME)');
    }
    // Drops per second: red bars on their own scale (right axis).
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.font = FONT;
    if (dmax > 0) {
      const dTop = niceStep(dmax);
      ctx.fillStyle = '#c62828';
      ctx.fillText(fmtCount(dTop), c.m.l + c.pw + 5, c.m.t + 6);
      ctx.fillText('0', c.m.l + c.pw + 5, c.m.t + c.ph - 4);
      clip(c);
      ctx.fillStyle = 'rgba(198, 40, 40, 0.75)';
      for (const p of v.pts) {
        if (!p.dropsRate) continue;
        const hgt = (p.dropsRate / dTop) * c.ph;
        const x1 = c.x(p.t);
        const x0 = Math.min(c.x(p.t - p.span), x1 - 2);
        ctx.fillRect(x0, c.m.t + c.ph - hgt, x1 - x0, hgt);
      }
      ctx.restore();
    } else {
      ctx.fillStyle = '#2e7d32';
      ctx.fillText('no', c.m.l + c.pw + 5, c.m.t + 8);
      ctx.fillText('drops', c.m.l + c.pw + 5, c.m.t + 21);
    }
    clip(c);
    line(c, v.pts, (p) => p.fps, '#2458c6', 1.8);
    ctx.restore();
  }

  function drawShares(v) {
    const c = frame($('share-chart'), {
      tMin: v.tMin, tMax: v.tMax, right: 96,
      yMax: 1, yStep: 0.25, yFmt: (x) => Math.round(x * 100) + '%',
    });
    const ctx = c.ctx;
    const has = (p) => st.stages.some((n) => p.stages[n] && p.stages[n].share != null);
    const pts = v.pts.filter(has);
    if (!pts.length) {
      message(c, st.root ? 'no frames in this range' : 'no frame stage (run with --frame-stage NAME)');
      return;
    }
    // One stacked column per interval, stages in plan order from the bottom.
    clip(c);
    for (const p of pts) {
      const x1 = c.x(p.t);
      const x0 = c.x(p.t - p.span) - 0.5;
      let cum = 0;
      for (const name of st.stages) {
        const s = p.stages[name];
        const share = s && s.share > 0 ? s.share : 0;
        if (!share) continue;
        ctx.fillStyle = color(name);
        const yTop = c.y(Math.min(cum + share, 1.2));
        ctx.fillRect(x0, yTop, x1 - x0 + 0.5, c.y(cum) - yTop);
        cum += share;
      }
    }
    ctx.restore();
    // Direct labels at the right, for bands tall enough, from the latest interval.
    const last = pts[pts.length - 1];
    ctx.font = FONT;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    let cum = 0;
    let lastY = Infinity;
    for (const name of st.stages) {
      const s = last.stages[name];
      const share = s && s.share > 0 ? s.share : 0;
      const mid = c.y(cum + share / 2);
      cum += share;
      if (share * c.ph < 10 || lastY - mid < 11) continue;
      lastY = mid;
      ctx.fillStyle = color(name);
      ctx.fillRect(c.m.l + c.pw + 4, mid - 4, 8, 8);
      ctx.fillStyle = '#1d2330';
      const label = name.length > 11 ? name.slice(0, 10) + '…' : name;
      ctx.fillText(label, c.m.l + c.pw + 15, mid);
    }
  }

  function draw() {
    st.drawPending = false;
    const v = visible();
    drawLatency(v);
    drawFps(v);
    drawShares(v);
  }

  function scheduleDraw() {
    if (st.drawPending) return;
    st.drawPending = true;
    requestAnimationFrame(draw);
  }

  // ---------------------------------------------------------------- stream

  function setConn(state, text) {
    const c = $('conn');
    c.className = 'conn ' + state;
    c.textContent = text;
  }

  function connect() {
    const es = new EventSource('/api/stream');
    es.addEventListener('update', (ev) => {
      let u;
      try {
        u = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      setConn('live', 'live');
      onUpdate(u);
    });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // Not an event stream (an agent without it?): try again later.
        setConn('down', 'disconnected');
        setTimeout(connect, 5000);
      } else {
        setConn('down', 'reconnecting');
      }
    };
  }

  function init() {
    $('stage-select').addEventListener('change', (e) => select(e.target.value));
    for (const b of $('range').querySelectorAll('button')) {
      b.addEventListener('click', () => {
        st.rangeS = Number(b.dataset.range);
        for (const o of $('range').querySelectorAll('button')) o.classList.toggle('on', o === b);
        scheduleDraw();
      });
    }
    if (window.ResizeObserver) {
      const ro = new ResizeObserver(scheduleDraw);
      for (const c of document.querySelectorAll('.chart')) ro.observe(c);
    } else {
      window.addEventListener('resize', scheduleDraw);
    }
    setInterval(() => {
      if (st.lastAt && Date.now() - st.lastAt > STALE_MS && $('conn').classList.contains('live')) {
        setConn('wait', 'stale: no update for ' + fmtAge(Date.now() - st.lastAt));
      }
    }, 1000);
    setInterval(loadProfile, PROFILE_EVERY_MS);
    setTimeout(loadProfile, 1500);
    scheduleDraw();
    connect();
  }

  init();
})();
