// The probe's model writer: `torpor-probe make-model OUT.gguf [layers= embd= ff= heads= kv_heads= vocab= type=]`.
#pragma once

#include "probe-args.h"

#include <string>

int make_model(const std::string & out, const Args & a);
