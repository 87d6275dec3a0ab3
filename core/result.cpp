#include "core/result.h"

#include <boost/throw_exception.hpp>

#include <stdexcept>

namespace certagent {

void throw_exception_from_error(const Error& e, const boost::source_location& loc) {
  boost::throw_exception(std::runtime_error(e.message), loc);
}

}  // namespace certagent
