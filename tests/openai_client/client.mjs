// The official `openai` npm client against nodepool's OpenAI-compatible
// front: only the base URL and the key change. Prints one JSON object; exits
// 1 with the reason when something is not as an application expects.
//
//   NODE_PATH=<dir>/node_modules node client.mjs BASE_URL KEY MODEL
import { createRequire } from "node:module";

const require = createRequire(process.env.NODEPOOL_NPM_DIR + "/");
const OpenAI = require("openai");

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const out = {};
const fail = (why) => {
  console.log(JSON.stringify({ ...out, error: why }));
  process.exit(1);
};

try {
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  if (!out.models.includes(model)) fail(`model ${model} not listed`);

  const chat = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Hello from the openai package" }],
    temperature: 0,
  });
  out.chat = chat.choices[0].message.content;
  out.chat_object = chat.object;
  if (!out.chat.includes("Hello from the openai package")) fail("chat answer");

  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Stream this answer" }],
    stream: true,
  });
  let streamed = "";
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    streamed += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  out.streamed = streamed;
  out.chunks = chunks;
  out.finish_reason = finish;
  if (!streamed.includes("Stream this answer") || finish !== "stop")
    fail("streamed answer");

  const completion = await client.completions.create({
    model,
    prompt: "Complete this",
    max_tokens: 32,
  });
  out.completion = completion.choices[0].text;
  if (!out.completion.includes("Complete this")) fail("completion answer");

  const cstream = await client.completions.create({
    model,
    prompt: "Stream this completion",
    stream: true,
  });
  let ctext = "";
  let cchunks = 0;
  let cfinish = null;
  for await (const chunk of cstream) {
    cchunks += 1;
    ctext += chunk.choices[0]?.text ?? "";
    cfinish = chunk.choices[0]?.finish_reason ?? cfinish;
  }
  out.completion_streamed = ctext;
  out.completion_chunks = cchunks;
  out.completion_finish_reason = cfinish;
  if (!ctext.includes("Stream this completion") || cfinish !== "stop")
    fail("streamed completion");

  // A wrong key: the library's own error class, with the status.
  const bad = new OpenAI({ baseURL, apiKey: "np_wrong_key_0000000000", maxRetries: 0 });
  try {
    await bad.models.list();
    fail("a wrong key was accepted");
  } catch (e) {
    out.wrong_key = { status: e.status, name: e.constructor.name };
    if (!(e instanceof OpenAI.AuthenticationError)) fail("not an AuthenticationError");
  }
  console.log(JSON.stringify(out));
} catch (e) {
  fail(String(e && e.stack ? e.stack : e));
}
