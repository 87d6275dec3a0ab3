#include "core/result.h"

#include <boost/throw_exception.hpp>

#include <stdexcept>

namespace certagent {

std::string_view to_string(Cause c) {
  switch (c) {
    case Cause::unreachable: return "unreachable";
    case Cause::refused: return "refused";
    case Cause::local_config: return "local_config";
    case Cause::unspecified: break;
  }
  return "unspecified";
}

void throw_exception_from_error(const Error& e, const boost::source_location& loc) {
  boost::throw_exception(std::runtime_error(e.message), loc);
}

}  // namespace certagent
