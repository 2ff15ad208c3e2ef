// Command-line arguments of the GPU probe (key=value pairs), its clock and its way out.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

using Args = std::map<std::string, std::string>;

inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline long arg_int(const Args & a, const char * key, long fallback) {
    auto it = a.find(key);
    return it == a.end() ? fallback : std::strtol(it->second.c_str(), nullptr, 10);
}

inline std::string arg_str(const Args & a, const char * key, const std::string & fallback) {
    auto it = a.find(key);
    return it == a.end() ? fallback : it->second;
}

[[noreturn]] inline void die(const std::string & why) {
    std::fprintf(stderr, "torpor-probe: %s\n", why.c_str());
    std::exit(2);
}

