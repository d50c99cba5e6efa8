// Driven by tests/test_transcription.py: the official openai npm package calls
// POST /v1/audio/transcriptions in every response format and prints, as one
// JSON object, what it got back for each (the parsed body, the content type
// and the request id).
// Usage: node transcribe.mjs BASE_URL API_KEY AUDIO_FILE
import fs from "node:fs";
import OpenAI from "openai";

const [baseURL, apiKey, file] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30000 });
const out = {};
for (const format of ["json", "text", "verbose_json", "srt", "vtt"]) {
  const { data, response } = await client.audio.transcriptions
    .create({
      model: "prometheus-echo",
      file: fs.createReadStream(file),
      response_format: format,
    })
    .withResponse();
  out[format] = {
    body: data,
    contentType: response.headers.get("content-type"),
    requestId: response.headers.get("x-request-id"),
  };
}
process.stdout.write(JSON.stringify(out));
