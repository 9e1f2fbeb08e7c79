/* Marks values that the code may branch on although they derive from secrets, because
 * they are published anyway (X25519 results). The constant-time test builds with
 * PSI_CTGRIND and runs under valgrind with the secrets marked undefined: memcheck then
 * reports any branch or memory index that depends on a secret, except after this mark. */
#ifndef PSI_CT_H
#define PSI_CT_H

#ifdef PSI_CTGRIND
#include <valgrind/memcheck.h>
#define PSI_DECLASSIFY(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#else
#define PSI_DECLASSIFY(p, n) ((void)(p), (void)(n))
#endif

#endif
