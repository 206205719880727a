#include "json.h"

#include <stdlib.h>

#include <stdexcept>

namespace gpucheck {

const Json* Json::get(const std::string& key) const {
  for (const auto& [k, v] : object)
    if (k == key) return &v;
  return nullptr;
}

namespace {

struct Parser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(i));
  }
  void space() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  }
  bool eat(char c) {
    space();
    if (i < s.size() && s[i] == c) return ++i, true;
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  bool word(const char* w) {
    size_t n = std::string(w).size();
    if (s.compare(i, n, w) == 0) return i += n, true;
    return false;
  }

  void utf8(std::string& o, unsigned cp) {
    if (cp < 0x80) o += (char)cp;
    else if (cp < 0x800) o += (char)(0xC0 | cp >> 6), o += (char)(0x80 | (cp & 0x3F));
    else if (cp < 0x10000) o += (char)(0xE0 | cp >> 12), o += (char)(0x80 | (cp >> 6 & 0x3F)), o += (char)(0x80 | (cp & 0x3F));
    else
      o += (char)(0xF0 | cp >> 18), o += (char)(0x80 | (cp >> 12 & 0x3F)), o += (char)(0x80 | (cp >> 6 & 0x3F)),
          o += (char)(0x80 | (cp & 0x3F));
  }
  unsigned hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i++];
      v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : (fail("bad \\u escape"), 0));
    }
    return v;
  }
  std::string str() {
    expect('"');
    std::string o;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') return o;
      if (c != '\\') {
        o += c;
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': case '\\': case '/': o += e; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'n': o += '\n'; break;
        case 'r': o += '\r'; break;
        case 't': o += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s.compare(i, 2, "\\u") == 0) {  // a surrogate pair
            i += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(o, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
  Json value(int depth) {
    if (depth > 64) fail("nesting deeper than 64");
    space();
    if (i >= s.size()) fail("unexpected end");
    Json v;
    char c = s[i];
    if (c == '{') {
      v.kind = Json::Object;
      i++;
      if (eat('}')) return v;
      do {
        space();
        std::string k = str();
        expect(':');
        v.object.emplace_back(std::move(k), value(depth + 1));
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      v.kind = Json::Array;
      i++;
      if (eat(']')) return v;
      do v.array.push_back(value(depth + 1));
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::String;
      v.string = str();
    } else if (word("true")) {
      v.kind = Json::Bool;
      v.boolean = true;
    } else if (word("false")) {
      v.kind = Json::Bool;
    } else if (word("null")) {
      v.kind = Json::Null;
    } else {
      const char* start = s.c_str() + i;
      char* end = nullptr;
      v.kind = Json::Number;
      v.number = strtod(start, &end);
      if (end == start) fail("unexpected character");
      i += end - start;
    }
    return v;
  }
};

}  // namespace

Json parse_json(const std::string& text) {
  Parser p{text};
  Json v = p.value(0);
  p.space();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

}  // namespace gpucheck
