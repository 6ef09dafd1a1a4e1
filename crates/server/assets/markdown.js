// A small, safe Markdown renderer for chat replies, and a keyword highlighter for code.
//
// Safety rule: every piece of text is HTML-escaped before it is placed in the output,
// and the only tags in the output are the ones written here. Links keep only the
// http(s) and mailto schemes (and in-page/relative paths); anything else renders as
// plain text. Model output is untrusted input.
//
// Supported: fenced code (``` or ~~~, unclosed fences run to the end so a streaming
// reply renders as code at once), inline code, **bold**, *italic*, ~~strike~~, headings,
// bullet and numbered lists (nested by indentation), block quotes, rules, GFM tables,
// links, bare http(s) URLs, hard line breaks inside paragraphs.

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ESC[c]);
}

// ---------------------------------------------------------------------------
// Code highlighting: one pass over the source with a sticky regex per family; each
// token is escaped on its own, so the output stays safe.

const KEYWORDS = new Set(
  (
    "if else elif for while do loop return function fn let const var class struct enum impl " +
    "trait pub use import from export def match case switch default break continue try catch " +
    "finally throw throws raise except new delete async await yield in of not and or is as " +
    "with where type interface package func go defer mut ref static extern void int float " +
    "double char bool boolean string str u8 u16 u32 u64 usize i8 i16 i32 i64 isize f32 f64 " +
    "self Self this super crate mod unsafe dyn move lambda pass global nonlocal assert del " +
    "public private protected final abstract extends implements override virtual namespace " +
    "template typename auto sizeof typedef union goto echo then fi done esac local select " +
    "insert update delete create table into values set join on group by order limit having " +
    "begin end elsif unless until require module val var object companion when"
  ).split(" ")
);
const LITERALS = new Set("true false null nil None True False undefined NaN Infinity".split(" "));

const HASH_COMMENT = new Set([
  "py", "python", "sh", "bash", "shell", "zsh", "console", "rb", "ruby", "yaml", "yml",
  "toml", "r", "perl", "pl", "make", "makefile", "dockerfile", "ini", "conf", "nim", "elixir",
]);
const DASH_COMMENT = new Set(["sql", "lua", "haskell", "hs", "ada"]);
const PLAIN = new Set(["text", "txt", "plain", "markdown", "md", "output", "log"]);

function tokenRegex(lang) {
  const comment = HASH_COMMENT.has(lang)
    ? String.raw`#[^\n]*`
    : DASH_COMMENT.has(lang)
      ? String.raw`--[^\n]*`
      : String.raw`\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$)`;
  const parts = [
    `(${comment})`, // 1 comment
    String.raw`("(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.){0,64}'|\x60(?:[^\x60\\]|\\.)*\x60?)`, // 2 string
    String.raw`(\b(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?)[a-zA-Z0-9_]*)`, // 3 number
    String.raw`([A-Za-z_$][\w$]*)`, // 4 word
  ];
  return new RegExp(parts.join("|"), "g");
}

export function highlight(code, lang) {
  lang = (lang || "").toLowerCase();
  if (PLAIN.has(lang) || lang === "html" || lang === "xml") return escapeHtml(code);
  const re = tokenRegex(lang);
  let out = "";
  let last = 0;
  for (const m of code.matchAll(re)) {
    out += escapeHtml(code.slice(last, m.index));
    const t = escapeHtml(m[0]);
    if (m[1] !== undefined) out += `<span class="tok-com">${t}</span>`;
    else if (m[2] !== undefined) out += `<span class="tok-str">${t}</span>`;
    else if (m[3] !== undefined) out += `<span class="tok-num">${t}</span>`;
    else if (KEYWORDS.has(m[4])) out += `<span class="tok-kw">${t}</span>`;
    else if (LITERALS.has(m[4])) out += `<span class="tok-lit">${t}</span>`;
    else out += t;
    last = m.index + m[0].length;
  }
  return out + escapeHtml(code.slice(last));
}

// ---------------------------------------------------------------------------
// Inline spans. Code spans and links are cut out first into placeholders (NUL + index +
// NUL; NUL is stripped from the input), so emphasis never reaches inside them.

function safeUrl(url) {
  const u = url.trim();
  if (/^(https?:|mailto:)/i.test(u)) return u;
  if (/^[#/]/.test(u) && !u.startsWith("//")) return u;
  return null;
}

function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^\w*])\*(?=[^\s*])([^*]*?[^\s*])\*(?![\w*])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

export function renderInline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = String(text).replace(/\u0000/g, "");
  // `code` (any run of backticks, matched by the same run)
  s = s.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (_, _t, code) =>
    hold(`<code>${escapeHtml(code.replace(/^ (.*) $/, "$1"))}</code>`)
  );
  // [label](url "title")
  s = s.replace(/\[([^\]\n]+)\]\(\s*<?((?:[^\s()<>]|\([^\s()<>]*\))+)>?(?:\s+"[^"\n]*")?\s*\)/g, (whole, label, url) => {
    const href = safeUrl(url);
    if (!href) return hold(emphasis(escapeHtml(label)));
    return hold(
      `<a href="${escapeHtml(href)}" target="_blank" rel="noopener noreferrer">${emphasis(escapeHtml(label))}</a>`
    );
  });
  // bare URLs (trailing punctuation stays outside the link)
  s = s.replace(/\bhttps?:\/\/[^\s<>"\u0000]+[^\s<>"\u0000.,;:!?)\]'*_]/g, (url) =>
    hold(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(url)}</a>`)
  );
  s = emphasis(escapeHtml(s));
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => held[Number(i)]);
}

// ---------------------------------------------------------------------------
// Blocks.

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
const TABLE_SEP = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;

function indentOf(line) {
  return line.match(/^ */)[0].length;
}

function splitRow(line) {
  let t = line.trim();
  if (t.startsWith("|")) t = t.slice(1);
  if (t.endsWith("|") && !t.endsWith("\\|")) t = t.slice(0, -1);
  return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function startsBlock(lines, i) {
  const l = lines[i];
  return (
    FENCE.test(l) || HEADING.test(l) || RULE.test(l) || QUOTE.test(l) || LIST_ITEM.test(l) ||
    (l.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-"))
  );
}

function codeBlock(lang, code) {
  const label = lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : "<span></span>";
  const cls = lang ? ` class="lang-${escapeHtml(lang)}"` : "";
  return (
    `<div class="code-block"><div class="code-bar">${label}` +
    `<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>` +
    `<pre><code${cls}>${highlight(code, lang)}</code></pre></div>`
  );
}

function renderList(lines, start) {
  const first = lines[start].match(LIST_ITEM);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  let loose = false;
  while (i < lines.length) {
    const m = lines[i].match(LIST_ITEM);
    if (!m || m[1].length > base + 1 || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = m[1].length + m[2].length + 1;
    const body = [m[3]];
    i++;
    while (i < lines.length) {
      const l = lines[i];
      if (l.trim() === "") {
        // A blank line continues the item only if indented content follows.
        const next = lines[i + 1];
        if (next !== undefined && next.trim() !== "" && indentOf(next) >= contentIndent) {
          body.push("");
          loose = true;
          i++;
          continue;
        }
        const nm = next !== undefined && next.match(LIST_ITEM);
        if (nm && nm[1].length <= base + 1 && /\d/.test(nm[2]) === ordered) loose = true;
        break;
      }
      const ind = indentOf(l);
      if (ind >= contentIndent) {
        body.push(l.slice(contentIndent));
      } else if (LIST_ITEM.test(l) && ind > base + 1) {
        body.push(l.slice(Math.min(ind, contentIndent)));
      } else if (!startsBlock(lines, i) && ind > base) {
        body.push(l.trim()); // lazy continuation
      } else if (!startsBlock(lines, i) && !LIST_ITEM.test(l)) {
        body.push(l.trim());
      } else {
        break;
      }
      i++;
    }
    items.push(body);
    if (i < lines.length && lines[i].trim() === "") {
      const next = lines[i + 1];
      const nm = next !== undefined && next.match(LIST_ITEM);
      if (nm && nm[1].length <= base + 1 && /\d/.test(nm[2]) === ordered) i++;
    }
  }
  const tag = ordered ? "ol" : "ul";
  const startAttr = ordered && parseInt(first[2], 10) !== 1 ? ` start="${parseInt(first[2], 10)}"` : "";
  const html = items
    .map((body) => {
      let inner = renderBlocks(body);
      if (!loose) inner = inner.replace(/^<p>([\s\S]*?)<\/p>/, "$1");
      return `<li>${inner}</li>`;
    })
    .join("");
  return { html: `<${tag}${startAttr}>${html}</${tag}>`, next: i };
}

function renderBlocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i++;
      continue;
    }
    let m = line.match(FENCE);
    if (m) {
      const fence = m[1];
      const lang = m[2].replace(/[^\w+#.-]/g, "").slice(0, 20);
      const body = [];
      i++;
      const close = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
      while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
      i++; // the closing fence (or past the end)
      out.push(codeBlock(lang, body.join("\n")));
      continue;
    }
    if ((m = line.match(HEADING))) {
      const level = m[1].length;
      out.push(`<h${level}>${renderInline(m[2])}</h${level}>`);
      i++;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && lines[i].trim() !== "") {
        body.push(lines[i].replace(QUOTE, ""));
        i++;
      }
      out.push(`<blockquote>${renderBlocks(body)}</blockquote>`);
      continue;
    }
    if (LIST_ITEM.test(line)) {
      const r = renderList(lines, i);
      out.push(r.html);
      i = r.next;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const head = splitRow(line);
      const aligns = splitRow(lines[i + 1]).map((c) =>
        c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : ""
      );
      const cell = (tag, text, k) =>
        `<${tag}${aligns[k] ? ` class="align-${aligns[k]}"` : ""}>${renderInline(text)}</${tag}>`;
      let html = `<div class="table-wrap"><table><thead><tr>${head.map((c, k) => cell("th", c, k)).join("")}</tr></thead><tbody>`;
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") {
        const row = splitRow(lines[i]);
        html += `<tr>${head.map((_, k) => cell("td", row[k] ?? "", k)).join("")}</tr>`;
        i++;
      }
      out.push(html + "</tbody></table></div>");
      continue;
    }
    const para = [line];
    i++;
    while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines, i)) para.push(lines[i++]);
    out.push(`<p>${para.map((l) => renderInline(l.trim())).join("<br>")}</p>`);
  }
  return out.join("");
}

/** Markdown source -> safe HTML. */
export function renderMarkdown(src) {
  const lines = String(src ?? "")
    .replace(/\r\n?/g, "\n")
    .replace(/\t/g, "    ")
    .split("\n");
  return renderBlocks(lines);
}
