// A small, safe Markdown subset rendered as DOM nodes, never as HTML: paragraphs (a single line
// break kept), "-"/"*" and "1." lists, ``` fenced and `inline` code, **bold**, and http(s) links.
// Anything else is text, so model or user text can never become markup.

export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = text.split("\n");
  let index = 0;
  while (index < lines.length) {
    const line = lines[index];
    if (line.startsWith("```")) {
      const code = [];
      index += 1;
      while (index < lines.length && !lines[index].startsWith("```")) code.push(lines[index++]);
      index += 1; // the closing fence, or past the end while it is still streaming
      const pre = document.createElement("pre");
      const element = document.createElement("code");
      element.textContent = code.join("\n");
      pre.append(element);
      fragment.append(pre);
    } else if (listItem(line)) {
      const ordered = listItem(line).ordered;
      const list = document.createElement(ordered ? "ol" : "ul");
      while (index < lines.length && listItem(lines[index])?.ordered === ordered) {
        const item = document.createElement("li");
        item.append(renderInline(listItem(lines[index]).text));
        list.append(item);
        index += 1;
      }
      fragment.append(list);
    } else if (line.trim() === "") {
      index += 1;
    } else {
      const paragraph = document.createElement("p");
      let first = true;
      while (index < lines.length && lines[index].trim() !== "" && !lines[index].startsWith("```") && !listItem(lines[index])) {
        if (!first) paragraph.append(document.createElement("br"));
        paragraph.append(renderInline(lines[index]));
        first = false;
        index += 1;
      }
      fragment.append(paragraph);
    }
  }
  return fragment;
}

function listItem(line) {
  const bullet = /^\s*[-*]\s+(.*)$/.exec(line);
  if (bullet) return { ordered: false, text: bullet[1] };
  const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
  if (numbered) return { ordered: true, text: numbered[1] };
  return null;
}

// `code`, **bold** and [label](http(s)://…); the rest as text.
const inlinePattern = /`([^`]+)`|\*\*([^*]+)\*\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;

function renderInline(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(inlinePattern)) {
    fragment.append(text.slice(last, match.index));
    if (match[1] !== undefined) {
      const code = document.createElement("code");
      code.textContent = match[1];
      fragment.append(code);
    } else if (match[2] !== undefined) {
      const strong = document.createElement("strong");
      strong.textContent = match[2];
      fragment.append(strong);
    } else {
      const link = document.createElement("a");
      link.href = match[4];
      link.textContent = match[3];
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      fragment.append(link);
    }
    last = match.index + match[0].length;
  }
  fragment.append(text.slice(last));
  return fragment;
}
