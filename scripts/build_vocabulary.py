"""Writes gateway/deid/data/clean_words.txt: the allow-list vocabulary of the "C" (clean) action.

Free text that is cleaned (Clean Descriptors, Clean Structured Content) keeps only words of this
list (see gateway/deid/vocabulary.py). The words come from:

* the code meanings of the standard's concepts (PS3.16: DCM, SNOMED CT, LOINC, UCUM, ... as
  shipped in pydicom's SR concept dictionary), minus concepts that name people, places or
  breeds (animal breeds, registries, equations and formulas named after their authors);
* the Body Part Examined defined terms (PS3.16 Annex L), modality codes, and imaging protocol
  words and abbreviations written below.

A vocabulary word must never be a name: a word is left out when it is

* in ``NEVER`` below (common given and family names of several languages, month and weekday
  names, address words), whatever list it comes from; the shipped list is tested against part
  of it;
* a word of the standard that is a given or family name of any locale of the Faker package
  (development-time only), unless it is in ``KEEP_DESPITE_NAME``: words reviewed one by one and
  kept because descriptors need them (WHITE matter, LONG axis, STONE protocol, X-RAY, ...). The
  curated lists below were reviewed the same way (DIXON, BRAVO, SWAN are kept). These few can
  still let a name through: a risk accepted, each word decided;
* an eponym (written with 's in a code meaning: Towne's, Waters', Hodgkin's), a capitalised
  proper noun inside a SNOMED CT meaning (SNOMED writes common words in lower case), a word the
  standard only ever capitalises (DCM writes Title Case) that is rare there and not shaped like a
  common word (Stenvers, Lauenstein, Judet: projections named after people), or in ``EPONYMS``
  (the names that survive those rules, found by reading the list);
* a single letter (except ``SINGLE_LETTERS``), a two-letter word of the standard that is not an
  English word written in lower case there (two capitals are often someone's initials; the
  needed abbreviations are in the curated lists), or anything with a digit (numbers are kept or
  removed by rule in gateway/deid/vocabulary.py).

Run it when pydicom is upgraded (Faker is needed here only, not by the gateway):

    pip install --target /tmp/devfaker faker
    PYTHONPATH=/tmp/devfaker .venv/bin/python scripts/build_vocabulary.py
"""

from __future__ import annotations

import collections
import datetime
import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
from pydicom.sr._cid_dict import name_for_cid
from pydicom.sr._concepts_dict import concepts


def _words(text: str) -> set[str]:
    return set(text.split())


TARGET = Path(__file__).resolve().parent.parent / "gateway" / "deid" / "data" / "clean_words.txt"

# Context groups whose concepts are named after people or places.
_EXCLUDED_CID_NAME = re.compile(r"Breed|Equation|Formula|Authority|Species|Organism|Virus|Registry", re.I)
# SNOMED CT semantic tags of concepts that are living things or places, not findings or anatomy.
_EXCLUDED_SNOMED_TAGS = ("(organism)", "(geographic location)", "(person)", "(ethnic group)",
                         "(racial group)")
_WORD = re.compile(r"[^\W\d_]+(?:'s?)?")

# Endings of ordinary English and medical words; a word that the standard only ever capitalises
# (DCM writes Title Case) is kept when it is rare only if it ends like this.
_COMMON_SUFFIX = re.compile(
    r"(OMA|ITIS|TOMY|GRAPHY|GRAPHIC|SCOPY|LOGY|LOGIC|LOGICAL|IC|ICS|OUS|ATED?|IDE|INE|IONS?|ITY|ISM"
    r"|IUM|ENT|ANT|ANCE|ENCE|ING|ED|MENT|NESS|[AI]BLE|LY|ARY|ORY|OID|OSIS|EMIA|PATHY|PLASTY|METRY"
    r"|METER|GRAM|MAB|IVE|I[SZ]E|URE|TORS?)$")

SINGLE_LETTERS = frozenset("CLORWX")  # C+ (contrast), L/R (side), W/O (with/without), X-RAY

# Modality codes (0008,0060) seen in descriptions; the rarer two-letter ones are left out, as two
# capitals are often someone's initials.
MODALITIES = """
CR CT DX MG MR NM OT PR PT RF SR US XA XR DR IO PX OP SM XC ASMT BDUS BMD ECG EPS HD IOL IVOCT
IVUS OAM OCT OPM OPT OPV OSS PLAN POS REG RESP RTDOSE RTIMAGE RTPLAN RTRECORD RTSTRUCT RWV SEG
SMR SRF STAIN MRI PET SPECT CTA MRA MRV CTV DEXA DXA NUC MAMMO MAMMOGRAM ANGIO FLUORO ECHO
"""

# PS3.16 Annex L, Body Part Examined (0018,0015) defined terms, and common spellings of them.
BODY_PARTS = """
ABDOMEN ABDOMENPELVIS ABDPELVIS ACJOINT ADRENAL ANKLE AORTA AORTIC ARM AXILLA BACK BILEDUCT
BLADDER BRACHIALA BRACHIALV BRAIN BREAST BRONCHUS BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM
CEREBRALA CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX COLON
COMMONILIACA CORNEA CORONARYARTERY CSPINE CTSPINE DUODENUM EAR ELBOW ESOPHAGUS EXTREMITY EYE
EYELID FACE FACIALA FEMORALA FEMORALV FEMUR FIBULA FINGER FOOT FOREARM GALLBLADDER HAND HEAD
HEADNECK HEART HIP HUMERUS IAC ILEUM ILIUM INNOMINATE INTERNALIACA JAW JEJUNUM KIDNEY KNEE LARYNX
LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN
NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX PROSTATE RADIUS
RECTUM RIB RIBS SACRUM SCALP SCAPULA SCLERA SCROTUM SELLA SHOULDER SINUS SINUSES SKULL SPINE
SPLEEN SSPINE STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THORAX THUMB THYMUS THYROID TIBIA TLSPINE
TMJ TOE TONGUE TRACHEA TSPINE ULNA URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA
IAM PETROUS MASTOID ORBITS FACIAL MANDIBLE DENTAL TEETH TOOTH CRANIUM CRANIAL BOWEL HEPATIC RENAL
ADNEXA CAROTIDS VERTEBRA VERTEBRAE LUMBAR THORACIC CERVICAL SACRAL SACROILIAC PITUITARY ACHILLES
"""

# Imaging protocol and series description words and their usual abbreviations.
DESCRIPTOR_WORDS = """
AX AXI AXIAL COR CORONAL SAG SAGITTAL OBL OBLIQUE TRA TRANS TRANSVERSE TRV MPR MIP MINIP VR VRT
SSD REFORMAT REFORMATS RECON RECONS RECONSTRUCTION THIN THICK SLAB SLICE SLICES
T1 T2 PD FLAIR STIR DWI DTI ADC EADC TRACE SWI SWAN GRE SPGR FSPGR BRAVO MPRAGE MP RAGE TSE FSE SE
IR EPI BOLD ASL PWI DSC DCE PERF PERFUSION CISS FIESTA TRUFI SSFP HASTE SSFSE VIBE LAVA THRIVE
DIXON IDEAL FS FATSAT SPAIR SPIR WATER FAT INPHASE OPPOSED OUTPHASE OOP INOPP CUBE SPACE VISTA
TOF PC MRCP MRU SPECTRO SPECTROSCOPY SVS CSI MRS SHIM LOCALIZER LOCALISER LOC LOCS SURVEY SCOUT
TOPOGRAM TOPO PILOT TRIPILOT SCANOGRAM CALIBRATION ASSET SENSE PURE NORM NORMALIZE
W WO WWO WITH WITHOUT WITHWITHOUT CONTRAST NONCONTRAST NONCON NC CE C CONT GAD GADO GADOLINIUM
IV ORAL RECTAL POSITIVE NEGATIVE PRE POST DELAY DELAYED EARLY LATE ARTERIAL VENOUS PORTAL
PORTOVENOUS NEPHROGRAPHIC EXCRETORY EQUILIBRIUM PHASE PHASES DYNAMIC MULTIPHASE BOLUS TRACKING
TEST MONITOR MONITORING SMARTPREP CAREBOLUS SUREVIEW
BONE SOFT TISSUE LUNG LUNGS WINDOW WINDOWS STANDARD DETAIL SHARP SMOOTH SHARPEST SMOOTHEST
KERNEL FILTER ITERATIVE IR ASIR ASIRV VEO SAFIRE ADMIRE IDOSE IMR AIDR DLIR TRUEFIDELITY FBP
DOSE LOW LOWDOSE ULTRALOW HIGH RESOLUTION HR HRCT ROUTINE PROTOCOL STUDY SERIES EXAM IMAGE
IMAGES VIEW VIEWS SCAN SCANS HELICAL SPIRAL SEQUENTIAL AXIALS CINE GATED GATING ECG PROSPECTIVE
RETROSPECTIVE CARDIAC CALCIUM SCORE SCORING CORONARY CTA CCTA ANGIOGRAM ANGIOGRAPHY RUNOFF
HEAD NECK CHEST ABDOMEN ABD PELVIS PELV CAP TAP WHOLE BODY WB SPINE CERVICAL THORACIC LUMBAR
BRAIN ORBITS SINUS FACE TEMPORAL BONES IAC IACS PITUITARY SELLA NEURO MSK EXTREMITY
LEFT RIGHT LT RT BILAT BILATERAL UNILATERAL BOTH SIDE SIDES UPPER LOWER UE PROXIMAL DISTAL
AP PA LAT LATERAL MEDIAL ANTERIOR POSTERIOR SUPERIOR INFERIOR CRANIAL CAUDAL LAO RAO LPO RPO
DECUB DECUBITUS SUPINE PRONE ERECT UPRIGHT STANDING WEIGHTBEARING FLEXION EXTENSION ROTATION
INTERNAL EXTERNAL INSPIRATION EXPIRATION INSP EXP BREATHHOLD BREATH HOLD FREE FREEBREATHING
NAVIGATOR RESPIRATORY TRIGGERED MOCO MOTION CORRECTED CORRECTION
CC MLO ML LM XCC XCCL SPOT MAG MAGNIFICATION TOMO TOMOSYNTHESIS SYNTHETIC SYNTHESIZED IMPLANT
DISPLACED CALC CALCS
US DOPPLER COLOR COLOUR POWER DUPLEX SPECTRAL WAVEFORM COMPLETE LIMITED FOCUSED TRANSVAGINAL
TRANSABDOMINAL TRANSRECTAL TRANSTHORACIC TRANSESOPHAGEAL TTE TEE ELASTOGRAPHY SHEAR WAVE
RENAL HEPATIC BILIARY OBSTETRIC OB GYN FETAL PELVIC SCROTAL THYROID CAROTID VENOUS ARTERIAL DVT
PET CT FDG PSMA DOTATATE AMYLOID FLUCICLOVINE NAF RUBIDIUM AMMONIA ATTENUATION CORRECTED
AC NAC CTAC EMISSION TRANSMISSION STATIC GATED FUSED FUSION SUV MIP NM BONE SCAN SPECT
XR XRAY RAY RAYS RADIOGRAPH RADIOGRAPHY FLUOROSCOPY FLUORO PORTABLE SKELETAL SURVEY
SCREENING DIAGNOSTIC FOLLOW FOLLOWUP UP BASELINE PREOP POSTOP PREOPERATIVE POSTOPERATIVE
BIOPSY GUIDED GUIDANCE DRAINAGE ABLATION INJECTION ASPIRATION PLACEMENT EMBOLIZATION STENT
TRAUMA STROKE CODE PE PROTOCOL ANGIO ANGIOGRAM VENOGRAM ARTHROGRAM MYELOGRAM UROGRAM ENTEROGRAPHY
COLONOGRAPHY VIRTUAL COLONOSCOPY URO ENTERO KUB IVP CXR RUQ RLQ LUQ LLQ AAA ENT VQ MIBG HIDA DAT
ADULT PEDIATRIC PAEDIATRIC PEDS PED CHILD INFANT NEONATAL NEWBORN SMALL MEDIUM LARGE XL
KVP MAS ML REFORMATTED REFORMATION DERIVED PRIMARY SECONDARY ORIGINAL
MPR3D VOLUME VOL ISO ISOTROPIC SUBTRACTION SUB SUBTRACTED RAW PROCESSED FILTERED
SUMMARY REPORT KEY IMAGES KEYIMAGES SCREENSHOT SCREEN CAPTURE SAVE SAVED DOSE INFO INFORMATION
PATIENT COMMENTS TEXT NOTE NOTES REVIEW REVIEWED REQUEST REQUESTED REPEAT REPEATED OUTSIDE PRIOR
COMPARISON REFERENCE QUALITY QC STAT URGENT ADDENDUM CORRECTED CORRECTION TECHNIQUE
AND OR OF THE TO FOR IN ON AT BY NO NOT PER VS VERSUS PLUS MINUS ONLY ALSO
"""

# Words that are also given or family names somewhere (per Faker) but that descriptors need.
# A person with one of these names can keep it in cleaned text: accepted, each one decided.
KEEP_DESPITE_NAME = frozenset(_words("""
ADD ALPHA AMINE ANTERO ARCH ARE ATLAS BACK BEAT BETA BITE BLACK BLOCK BONES BRAIN BRANCH BRIDGE
BRIGHT CANAL CARINA CARRIER CASE CENTRAL CHIN CISTERNA CLEAR CLOSE COLON COMMENT CONCHA CONSTANT
CONTRA CORD CORONA CROSS DATE DAY DEEP DELTA DOCTOR DOPPLER DOT DROP DWI ECHO ENDO ETHER ETHYL FIT
FLOOR FOOT FRONT GAUGE GENERAL GLASS GOOD GRAY GREY GROSS HAND HELD HEMI HOLDER HORN ICA INFANT
ION IRIS JET KEY KIDNEY LAD LAO LEAN LESS LINE LIST LONG LOW LUNG MADE MAGNA MAJOR MALE MATER
MEDIA MIN MINOR MORE NADIR NAIL NEO NICKEL NIL ORAL ORIS PACE PALM PAP PARA PARENT PEER PER PERI
PIA PIN POST POWER RAO RAY READ READER REAL REASON RED RIDGE RING ROD ROLL ROOM SHADE SHARP SHORT
SMALL SOLAR SOLE STONE STRONG THE THETA TONE TOO TRACE TRUE UNIQUE UNKNOWN VENA VIAL WALL WARMER
WASH WATER WHITE WING YAW ZETA
"""))

# Surnames that survive the rules above (only ever capitalised in DCM, but common enough or shaped
# like a word): found by reading the list.
EPONYMS = frozenset(_words("""
AGATSTON BAZETT BERNOULLI BROSELOW COUINAUD FREDERICIA FRIDERICIA HAIGIS HOFFER HOUNSFIELD JOSLIN
MOBITZ NOTTINGHAM PRINZMETAL RAFERT STENVERS TARRANT TEICHHOLZ WENCKEBACH
"""))

# Never vocabulary, whatever the sources say: very common given and family names of several
# languages (also those that are ordinary English words), month and weekday names (dates), words
# of postal addresses, and honorifics that only ever precede a name.
NEVER = frozenset(_words("""
MAY MARK BILL GRACE JUNE APRIL AUGUST FRANK WILL HOPE FAITH JOY ROSE DAWN IVY HOLLY HUNTER MASON
MAX PENNY ROBIN SUMMER AUTUMN WINTER CHASE CHRISTIAN DEAN EARL FORD GRANT HARDY JUDGE KING MILES
NORMAN PARK PRINCE ROSS RUSSELL SPRING STERLING STEWART WARD WELLS WEST YOUNG ANGEL AMBER BROOK
CHERRY CRYSTAL DAISY DESIRE DIAMOND EVE FERN GINGER GOLDIE HAZEL HEATHER JADE JASMINE LILY
MELODY OLIVE PEARL RUBY SAGE STORM VIOLET WILLOW BARON BISHOP BOND CASH COLE CROW DOVE DRAKE
FISHER FOX GUY HART HAWK HOLMES LANE LONGO LOVE MARSH MOSS NASH NOBLE PAGE PIKE
PRICE REED RICE RIVERS SALMON SHAW STARK WOLF WOODS WREN
SMITH JOHNSON WILLIAMS JONES BROWN DAVIS MILLER WILSON MOORE TAYLOR ANDERSON THOMAS JACKSON
HARRIS MARTIN THOMPSON GARCIA MARTINEZ ROBINSON CLARK RODRIGUEZ LEWIS LEE WALKER HALL ALLEN
HERNANDEZ HILL SCOTT GREEN ADAMS BAKER GONZALEZ NELSON CARTER MITCHELL PEREZ ROBERTS TURNER
PHILLIPS CAMPBELL PARKER EVANS EDWARDS COLLINS MORRIS MURPHY COOK ROGERS MORGAN PETERSON COOPER
BAILEY BELL GOMEZ KELLY HOWARD COX DIAZ RICHARDSON WOOD WATSON BROOKS BENNETT JAMES REYES
CRUZ HUGHES MYERS FOSTER SANDERS POWELL SULLIVAN BUTLER BARNES FISHER HENDERSON COLEMAN
SIMMONS PATTERSON JORDAN REYNOLDS HAMILTON GRAHAM KIM GONZALES ALEXANDER WALLACE GRIFFIN WEST
HARTLEY SMITHSON KOWALCZYK KOWALSKI NOWAK WISNIEWSKI WOJCIK LEWANDOWSKI
MULLER MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN SCHAFER KOCH
BAUER RICHTER KLEIN WOLF SCHRODER NEUMANN SCHWARZ ZIMMERMANN BRAUN KRUGER HOFMANN HARTMANN LANGE
DUBOIS DURAND LEROY MOREAU SIMON LAURENT LEFEBVRE MICHEL FOURNIER GIRARD BONNET DUPONT LAMBERT
ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI MARINO GRECO BRUNO GALLO CONTI
FERNANDEZ LOPEZ SANCHEZ RAMIREZ TORRES FLORES RIVERA MORALES ORTIZ SILVA SANTOS OLIVEIRA SOUZA
PEREIRA COSTA FERREIRA ALVES RODRIGUES MARTINS
DEJONG JANSEN DEVRIES VANDENBERG BAKKER VISSER SMIT MEIJER HANSEN JOHANSSON NILSSON LARSSON
ANDERSSON OLSEN NIELSEN JENSEN PEDERSEN KORHONEN VIRTANEN NOVAK NOVAKOVA SVOBODA DVORAK HORVATH
NAGY KOVACS TOTH SZABO POPESCU IONESCU PAPADOPOULOS IVANOV IVANOVA PETROV SMIRNOV KUZNETSOV
POPOV SOKOLOV YILMAZ KAYA DEMIR SAHIN CELIK
WANG LI ZHANG LIU CHEN YANG HUANG ZHAO WU ZHOU XU SUN MA ZHU HU GUO HE LIN LUO GAO ZHENG LIANG
XIE TANG HAN FENG DENG CAO PENG ZENG XIAO TIAN DONG PAN YUAN CAI JIANG YU DU YE CHENG WEI SU LU
DING REN SHEN YAO WONG CHAN CHEUNG LAM LEUNG HO NG TAN LIM TEO GOH ONG CHUA
NGUYEN TRAN LE PHAM HOANG PHAN VU VO DANG BUI DO
SATO SUZUKI TAKAHASHI TANAKA WATANABE ITO YAMAMOTO NAKAMURA KOBAYASHI KATO YOSHIDA YAMADA SASAKI
YAMAGUCHI MATSUMOTO INOUE KIMURA HAYASHI SHIMIZU
KIM LEE PARK CHOI JUNG KANG CHO YOON JANG LIM HAN OH SEO SHIN KWON HWANG AHN SONG JEON HONG
PATEL SHARMA SINGH KUMAR GUPTA SHAH KHAN MEHTA JOSHI REDDY IYER NAIR DAS BOSE
MOHAMMED MOHAMMAD MUHAMMAD AHMED AHMAD ALI HASSAN HUSSEIN HUSSAIN IBRAHIM MAHMOUD MUSTAFA OMAR
YOUSSEF KHALIL ABDULLAH COHEN LEVI MIZRAHI PERETZ BITON FRIEDMAN
JOHN JOHNNY JON JACK JAMES JIM JIMMY ROBERT ROB BOB BOBBY MICHAEL MIKE WILLIAM WILLIE BILLY DAVID
DAVE RICHARD RICK DICK JOSEPH JOE THOMAS TOM CHARLES CHARLIE CHRISTOPHER CHRIS DANIEL DAN DANNY
MATTHEW MATT ANTHONY TONY DONALD DON STEVEN STEVE PAUL ANDREW ANDY JOSHUA KENNETH KEN KEVIN BRIAN
GEORGE EDWARD ED RONALD RON TIMOTHY TIM JASON JEFFREY JEFF RYAN JACOB GARY NICHOLAS NICK ERIC
STEPHEN JONATHAN LARRY JUSTIN BRANDON BENJAMIN BEN SAMUEL SAM GREGORY GREG PATRICK PAT
PETER PETE HENRY HARRY WALTER ARTHUR ALBERT ALFRED LOUIS CARL HAROLD ROGER RAYMOND GERALD
MARY PATRICIA JENNIFER LINDA ELIZABETH LIZ BARBARA SUSAN JESSICA SARAH KAREN NANCY LISA BETTY
MARGARET SANDRA ASHLEY DOROTHY KIMBERLY EMILY DONNA MICHELLE CAROL AMANDA MELISSA DEBORAH
STEPHANIE REBECCA LAURA SHARON CYNTHIA KATHLEEN AMY SHIRLEY ANGELA HELEN ANNA ANN ANNE BRENDA
PAMELA NICOLE EMMA SAMANTHA KATHERINE KATE CHRISTINE DEBRA RACHEL CATHERINE CAROLYN JANET
MARIA MARIE VIRGINIA JULIE JULIA JUDY JOAN EVELYN CHERYL MEGAN ANDREA OLIVIA SOPHIA ISABELLA
HANS JURGEN KLAUS WOLFGANG HELMUT STEFAN ANDREAS MICHAELA URSULA MONIKA PETRA SABINE GABRIELE
JEAN PIERRE JACQUES MARC LUC NICOLAS FRANCOIS PHILIPPE ALAIN MARTINE NATHALIE ISABELLE SYLVIE
GIUSEPPE GIOVANNI ANTONIO MARIO LUIGI FRANCESCO ROBERTO MARCO ALESSANDRO GIULIA FRANCESCA CHIARA
JOSE JUAN CARLOS MANUEL FRANCISCO JAVIER MIGUEL PEDRO LUIS JORGE CARMEN ANA LUCIA ISABEL ROSA
JOAO PAULO TIAGO FERNANDA BEATRIZ
JAN PIET KEES WILLEM SVEN LARS OLOF ERIK NILS INGRID KARIN ASTRID
PIOTR KRZYSZTOF ANDRZEJ TOMASZ PAWEL MARCIN AGNIESZKA KATARZYNA MALGORZATA
IVAN DMITRI SERGEI ALEXEI VLADIMIR OLGA TATIANA NATALIA SVETLANA IRINA ELENA
WEI JING MING HUI YING LING XIN JUN HONG YAN FANG HUA XIAO JIAN QING XIU
HIROSHI TAKESHI KENJI YUKI AKIRA YUMI KEIKO HARUKA SAKURA MINJUN SEOYEON JIHOON
MOHAMED AHMET MEHMET MUSTAFA FATIMA AISHA AYSE EMINE LEILA YASMIN
RAJ RAJESH RAVI AMIT ANIL PRIYA SUNITA ANITA DEEPAK VIJAY
JANUARY FEBRUARY MARCH JULY SEPTEMBER OCTOBER NOVEMBER DECEMBER
JAN FEB MAR APR JUN JUL AUG SEP SEPT NOV DEC
MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY MON TUE TUES WED THU THUR THURS FRI SAT
STREET ROAD AVENUE AVE BOULEVARD BLVD LANE DRIVE COURT TERRACE CRESCENT HIGHWAY PARKWAY SUITE
APARTMENT APT POSTCODE ZIPCODE ZIP BOX STRASSE STR RUE VIA CALLE PLAZA PLATZ WEG
MISS MME MLLE HERR FRAU SIG SENOR SENORA SIR MADAM
"""))


def _word_forms() -> tuple[dict[str, set[str]], collections.Counter[str]]:
    """Every word of an accepted code meaning, with the forms in which it was seen and the
    number of meanings it was seen in."""
    excluded = {cid for cid, name in name_for_cid.items() if _EXCLUDED_CID_NAME.search(name)}
    forms: dict[str, set[str]] = collections.defaultdict(set)
    meanings: collections.Counter[str] = collections.Counter()
    for scheme, by_keyword in concepts.items():
        for codes in by_keyword.values():
            meaning: str
            cids: list[int]
            for meaning, cids in codes.values():  # type: ignore[attr-defined]
                if (cids and all(cid in excluded for cid in cids)) or meaning.endswith(_EXCLUDED_SNOMED_TAGS):
                    continue
                words = _WORD.findall(meaning)
                for position, word in enumerate(words):
                    forms[_base(word).upper()].add(_form(word, position, sentence_case=scheme == "SCT"))
                meanings.update({_base(word).upper() for word in words})
    return forms, meanings


def _base(word: str) -> str:
    return word.split("'")[0]


def _form(word: str, position: int, sentence_case: bool) -> str:
    if "'" in word:
        return "eponym"
    if not word.isascii():
        return "foreign"
    if word.islower():
        return "lower"
    if word.isupper():
        return "upper"
    if sentence_case and position > 0:
        return "proper"  # SNOMED CT writes common words in lower case after the first
    return "title"


def standard_words() -> set[str]:
    """Words of the standard's code meanings that are neither eponyms nor proper nouns."""
    forms, meanings = _word_forms()
    words = set()
    for word, seen in forms.items():
        if seen & {"eponym", "foreign"} or ("proper" in seen and "lower" not in seen):
            continue
        if len(word) == 2 and "lower" not in seen:
            continue  # two capitals are too often initials; the needed ones are listed above
        if seen <= {"title", "upper"} and "title" in seen and meanings[word] < 3 \
                and not _COMMON_SUFFIX.search(word):
            continue  # only ever capitalised, rare, and not shaped like a common word: a name?
        words.add(word)
    return words - EPONYMS


def faker_names() -> tuple[set[str], str]:
    """Given and family names of every locale that Faker knows, and Faker's version."""
    import faker  # development-time only: the gateway does not need it
    from faker.providers import person

    names: set[str] = set()
    for module_info in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module_info.name}").Provider
        for attribute in dir(provider):
            if "name" in attribute and "format" not in attribute and not attribute.startswith("_"):
                names.update(_name_parts(getattr(provider, attribute)))
    return names, faker.VERSION


def _name_parts(values: object) -> Iterator[str]:
    if isinstance(values, (tuple, list, dict)):
        for value in values:
            if isinstance(value, str):
                for part in re.split(r"[\s\-'.]+", value):
                    if part.isascii() and part.isalpha():
                        yield part.upper()


def is_acceptable(word: str) -> bool:
    return word.isascii() and word.isalpha() and word.isupper() and (len(word) > 1 or word in SINGLE_LETTERS)


def vocabulary(names: Iterable[str]) -> list[str]:
    curated = _words(MODALITIES) | _words(BODY_PARTS) | _words(DESCRIPTOR_WORDS) | SINGLE_LETTERS
    curated = {word for word in curated if word.isalpha()}  # T1, T2... are kept by rule
    clash = curated & NEVER
    if clash:
        raise SystemExit(f"curated words that NEVER forbids: {sorted(clash)}")
    name_set = set(names) - KEEP_DESPITE_NAME
    from_standard = {word for word in standard_words() if word not in name_set}
    return sorted(word for word in (from_standard | curated) - NEVER if is_acceptable(word))


def main() -> None:
    names, faker_version = faker_names()
    words = vocabulary(names)
    header = (
        "# Clean-action vocabulary: words that cleaned free text may keep (one per line, upper case).\n"
        f"# Sources: code meanings of pydicom {pydicom.__version__}'s SR concept dictionary (PS3.16:"
        " DCM, SCT, LN, UCUM, ...), PS3.16 Annex L body parts, modality codes and protocol words"
        " of scripts/build_vocabulary.py.\n"
        f"# Names left out: the script's NEVER list and the given and family names of Faker {faker_version}"
        " (save KEEP_DESPITE_NAME).\n"
        f"# {len(words)} words, written {datetime.date.today().isoformat()} by scripts/build_vocabulary.py;"
        " do not edit by hand.\n"
    )
    TARGET.write_text(header + "".join(f"{word}\n" for word in words), encoding="utf-8")
    print(f"{len(words)} words, {TARGET.stat().st_size} bytes -> {TARGET}")


if __name__ == "__main__":
    main()
