-- wrk script: POST a small non-stream chat request (valid both as an OpenAI
-- and as an Ollama native body, so every target does the same upstream work).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"qwen3:8b","messages":[{"role":"user","content":"hi there"}],"stream":false,"think":false}'
