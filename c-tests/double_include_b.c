/* Second translation unit of the double-include test. */
#include "layerpager.h"

const char *version_from_b(void) { return pager_version(); }
