// Unit tests of the web chat's Markdown renderer (crates/server/assets/markdown.js):
// model output is untrusted, so the safety cases come first.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";

const src = fs.readFileSync(new URL("../../crates/server/assets/markdown.js", import.meta.url), "utf8");
// The asset is an ES module served as is; import it from its text.
const md = await import("data:text/javascript," + encodeURIComponent(src));
const { renderMarkdown, renderInline, highlight } = md;

/** Every tag name in an HTML string. */
const tags = (html) => [...html.matchAll(/<\/?([a-zA-Z][a-zA-Z0-9]*)/g)].map((m) => m[1].toLowerCase());
const ALLOWED = new Set([
  "p", "br", "strong", "em", "del", "code", "pre", "a", "ul", "ol", "li", "h1", "h2", "h3", "h4",
  "h5", "h6", "blockquote", "hr", "table", "thead", "tbody", "tr", "th", "td", "div", "span", "button",
]);

test("raw HTML is shown as text, never as markup", () => {
  const attacks = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "**<b>bold</b>**",
    "`<x>` and <iframe src=//evil>",
    "- <svg onload=alert(1)>\n- ok",
    "```html\n<script>alert(1)</script>\n```",
    "| <b>h</b> |\n|---|\n| <i>c</i> |",
    "# <style>body{display:none}</style>",
    "> <a href=javascript:alert(1)>x</a>",
  ];
  for (const a of attacks) {
    const html = renderMarkdown(a);
    for (const t of tags(html)) assert.ok(ALLOWED.has(t), `tag <${t}> from ${JSON.stringify(a)}: ${html}`);
    assert.ok(!/<(script|img|iframe|svg|style|b|i)\b/i.test(html), html);
    assert.ok(!/<[a-z][^>]*\son\w+=/i.test(html), `event handler attribute: ${html}`);
  }
});

test("links keep only safe schemes and cannot break out of the attribute", () => {
  const bad = [
    "[x](javascript:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "[x](vbscript:msgbox)",
    "[x](//evil.example/a)",
  ];
  for (const b of bad) {
    const html = renderInline(b);
    assert.ok(!html.includes("<a "), `${b} -> ${html}`);
    assert.ok(html.includes("x"), html);
  }
  const ok = renderInline('[docs](https://example.com/a?b=1&c="2")');
  assert.match(ok, /^<a href="https:\/\/example\.com\/a\?b=1&amp;c=&quot;2&quot;" target="_blank" rel="noopener noreferrer">docs<\/a>$/);
  assert.equal(renderInline("[mail](mailto:a@b.c)"), '<a href="mailto:a@b.c" target="_blank" rel="noopener noreferrer">mail</a>');
  // A bare URL becomes a link without its trailing full stop.
  assert.equal(
    renderInline("see https://example.com/x_y."),
    'see <a href="https://example.com/x_y" target="_blank" rel="noopener noreferrer">https://example.com/x_y</a>.'
  );
});

test("inline spans", () => {
  assert.equal(renderInline("**b** *i* ~~s~~ `c*d*`"), "<strong>b</strong> <em>i</em> <del>s</del> <code>c*d*</code>");
  assert.equal(renderInline("snake_case_name and 2*3*4"), "snake_case_name and 2*3*4");
  assert.equal(renderInline("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
  // NUL (the renderer's placeholder mark) in the input cannot forge a placeholder.
  assert.equal(renderInline("\u00000\u0000`x`"), "0<code>x</code>");
});

test("blocks: headings, lists, quotes, rules, tables, paragraphs", () => {
  assert.equal(renderMarkdown("## Title ##"), "<h2>Title</h2>");
  assert.equal(renderMarkdown("line one\nline two\n\nnext"), "<p>line one<br>line two</p><p>next</p>");
  assert.equal(renderMarkdown("- a\n- b\n  - c\n- d"), "<ul><li>a</li><li>b<ul><li>c</li></ul></li><li>d</li></ul>");
  assert.equal(renderMarkdown("3. x\n4. y"), '<ol start="3"><li>x</li><li>y</li></ol>');
  assert.equal(renderMarkdown("- a\n\n- b"), "<ul><li><p>a</p></li><li><p>b</p></li></ul>");
  assert.equal(renderMarkdown("- a\n\n1. b"), "<ul><li>a</li></ul><ol><li>b</li></ol>");
  assert.equal(renderMarkdown("> q\n> r"), "<blockquote><p>q<br>r</p></blockquote>");
  assert.equal(renderMarkdown("a\n\n---\n\nb"), "<p>a</p><hr><p>b</p>");
  assert.equal(
    renderMarkdown("| a | b |\n|:--|--:|\n| 1 | 2 |"),
    '<div class="table-wrap"><table><thead><tr><th class="align-left">a</th><th class="align-right">b</th></tr></thead>' +
      '<tbody><tr><td class="align-left">1</td><td class="align-right">2</td></tr></tbody></table></div>'
  );
});

test("fenced code: highlighted, copy button, unclosed fence runs to the end", () => {
  const html = renderMarkdown("Here:\n```python\ndef f(x):\n    return 'a' # note\n```\nafter");
  assert.match(html, /^<p>Here:<\/p><div class="code-block">/);
  assert.match(html, /<button type="button" class="copy-code" aria-label="Copy code">Copy<\/button>/);
  assert.match(html, /<code class="lang-python"><span class="tok-kw">def<\/span> f\(x\):/);
  assert.match(html, /<span class="tok-str">&#39;a&#39;<\/span> <span class="tok-com"># note<\/span>/);
  assert.match(html, /<\/div><p>after<\/p>$/);
  // While a reply streams, the closing fence has not arrived yet.
  const open = renderMarkdown("```js\nconst x = 1;\nlet y");
  assert.match(open, /<span class="tok-kw">const<\/span> x = <span class="tok-num">1<\/span>;\n<span class="tok-kw">let<\/span> y<\/code><\/pre><\/div>$/);
  // A fence's language tag cannot inject attributes.
  const tag = renderMarkdown('```"><img\nx\n```');
  assert.ok(!tag.includes("<img"), tag);
});

test("highlighter escapes every token and keeps the text", () => {
  const code = 'if (a < b) { s = "<tag>"; } // <end>\n/* multi\nline */ x = 0x1F;';
  const html = highlight(code, "c");
  const text = html.replace(/<\/?span[^>]*>/g, "").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&amp;/g, "&");
  assert.equal(text, code);
  assert.ok(!/<(?!\/?span)/.test(html), html);
  assert.match(html, /<span class="tok-com">\/\* multi\nline \*\/<\/span>/);
  assert.match(html, /<span class="tok-num">0x1F<\/span>/);
  assert.equal(highlight("<b>", "html"), "&lt;b&gt;");
});
