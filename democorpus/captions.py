"""Hand-written facts for the demo corpus: where each source photo comes from, its licence, and
bilingual captions (English + Chinese: short, long, tags, plus a web-style alt text).

Kept apart from ``democorpus.corpus`` (the code that builds the corpus) because this is data a person
reviews line by line: every caption was written while looking at the image and must stay true of
it. Region crops reuse only the short captions and tags, which were written to stay true of any
crop the builder takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Photo", "TextCard", "PHOTOS", "FACES", "TEXT_CARDS", "WATERMARKS"]


@dataclass(frozen=True)
class Photo:
    """One real image shipped in a package, with its captions.

    ``en``/``zh`` are (short, long, tags); tags are comma-separated (", " in English, "，" in Chinese).
    ``text_in_image`` is text already visible in the original (OCR should find it).
    """

    package: str  # skimage | sklearn | matplotlib
    file: str  # file name inside the package's data folder
    title: str
    license: str
    attribution: str
    en: tuple[str, str, str]
    zh: tuple[str, str, str]
    alt: str  # what a web page's alt attribute might say: terse, sometimes just a file name
    kind: str = "photo"  # photo | graphic | scan | texture | microscopy | medical
    keep_bytes: bool = False  # the corpus original is the package's file byte for byte
    text_in_image: str | None = None
    degradations: tuple[str, ...] = ()  # already present in the source photo


PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(
        "skimage",
        "astronaut.png",
        "Eileen Collins, NASA portrait",
        "public domain (NASA; 'no known copyright restrictions' per scikit-image)",
        "NASA",
        (
            "Portrait of astronaut Eileen Collins in an orange spacesuit",
            "Official NASA portrait of astronaut Eileen Collins smiling in an orange launch and entry suit, "
            "with her helmet in front of her, an American flag on the left and a model of the space shuttle on the right.",
            "astronaut, portrait, spacesuit, NASA, American flag, space shuttle model, woman, smiling",
        ),
        (
            "身穿橙色宇航服的宇航员艾琳·柯林斯肖像",
            "美国国家航空航天局宇航员艾琳·柯林斯的官方肖像：她身穿橙色发射返回服，面带微笑，身前放着头盔，左侧是美国国旗，右侧是航天飞机模型。",
            "宇航员，肖像，宇航服，美国国家航空航天局，美国国旗，航天飞机模型，女性，微笑",
        ),
        "NASA astronaut Eileen Collins official portrait",
    ),
    "camera": Photo(
        "skimage",
        "camera.png",
        "Cameraman",
        "CC0",
        "Lav Varshney",
        (
            "A man looking through a camera on a tripod",
            "Black-and-white photograph of a man in a dark coat looking through a camera mounted on a tripod "
            "on a grassy field, with buildings and a domed roof in the distant background.",
            "photographer, camera, tripod, man, black and white, outdoors, grass field",
        ),
        (
            "一名男子通过三脚架上的相机取景",
            "一张黑白照片：身穿深色外套的男子在草地上透过三脚架上的相机取景，远处背景中有建筑和一座圆顶。",
            "摄影师，相机，三脚架，男子，黑白，户外，草地",
        ),
        "cameraman.png",
        keep_bytes=True,
    ),
    "chelsea": Photo(
        "skimage",
        "chelsea.png",
        "Chelsea the cat",
        "CC0",
        "Stefan van der Walt",
        (
            "Close-up of a tabby cat with green eyes",
            "A close-up of a brown tabby cat's face with striped fur, long white whiskers, a pink nose and "
            "yellow-green eyes looking to the side, against a soft, blurred indoor background.",
            "cat, tabby, pet, close-up, whiskers, green eyes, animal",
        ),
        (
            "一只绿眼睛虎斑猫的特写",
            "一只棕色虎斑猫的面部特写：条纹皮毛、长长的白色胡须、粉色鼻子和黄绿色的眼睛望向一侧，背景是柔和模糊的室内环境。",
            "猫，虎斑猫，宠物，特写，胡须，绿眼睛，动物",
        ),
        "chelsea the cat",
    ),
    "coffee": Photo(
        "skimage",
        "coffee.png",
        "Coffee cup (Pikolo Espresso Bar)",
        "CC0",
        "Rachel Michetti",
        (
            "A cup of espresso on a red saucer",
            "Overhead view of a red espresso cup with a white interior and golden crema on a matching red saucer "
            "with a silver spoon, on a worn wooden table.",
            "coffee, espresso, cup, saucer, spoon, wooden table, cafe",
        ),
        (
            "红色茶托上的一杯浓缩咖啡",
            "从上方俯视的一杯浓缩咖啡：红色杯子内壁为白色，咖啡表面有金色油脂，放在配套的红色茶托上，旁边有一把银色小勺，下面是一张旧木桌。",
            "咖啡，浓缩咖啡，杯子，茶托，勺子，木桌，咖啡馆",
        ),
        "espresso cup at Pikolo Espresso Bar",
    ),
    "coins": Photo(
        "skimage",
        "coins.png",
        "Greek coins from Pompeii",
        "no known copyright restrictions (Brooklyn Museum collection)",
        "Brooklyn Museum",
        (
            "Ancient Greek coins laid out on a dark background",
            "Black-and-white photograph of two dozen ancient silver coins from Pompeii, arranged in four rows "
            "on a dark background, each showing a worn head or figure.",
            "coins, ancient, Greek, Pompeii, museum collection, black and white, numismatics",
        ),
        (
            "深色背景上摆放的古希腊硬币",
            "一张黑白照片：二十多枚来自庞贝的古代银币在深色背景上排成四行，每枚都有磨损的头像或图案。",
            "硬币，古代，希腊，庞贝，博物馆藏品，黑白，钱币学",
        ),
        "Greek coins from Pompeii, Brooklyn Museum",
        keep_bytes=True,
    ),
    "horse": Photo(
        "skimage",
        "horse.png",
        "Horse silhouette (openclipart)",
        "CC0",
        "Andreas Preuss (marauder)",
        (
            "Black silhouette of a horse",
            "A solid black silhouette of a standing horse seen from the side, its head to the right, on a plain background.",
            "horse, silhouette, clip art, black and white, animal",
        ),
        ("一匹马的黑色剪影", "一匹站立的马的纯黑色侧面剪影，马头朝右，背景为纯色。", "马，剪影，剪贴画，黑白，动物"),
        "horse silhouette clipart",
        kind="graphic",
        keep_bytes=True,
    ),
    "hubble_deep_field": Photo(
        "skimage",
        "hubble_deep_field.jpg",
        "Hubble eXtreme Deep Field",
        "public domain (NASA)",
        "NASA / HubbleSite",
        (
            "The Hubble eXtreme Deep Field full of distant galaxies",
            "A deep-space image from the Hubble Space Telescope showing thousands of faint, colourful galaxies "
            "of many shapes and sizes scattered across a black sky.",
            "space, galaxies, Hubble, astronomy, deep field, stars, universe",
        ),
        (
            "布满遥远星系的哈勃极深场",
            "哈勃太空望远镜拍摄的深空图像：成千上万个形状和大小各异、色彩斑斓的暗弱星系散布在黑色的天空中。",
            "太空，星系，哈勃，天文学，深场，恒星，宇宙",
        ),
        "Hubble eXtreme Deep Field (XDF)",
    ),
    "retina": Photo(
        "skimage",
        "retina.jpg",
        "Fundus photograph of a normal left eye",
        "CC0",
        "Mikael Häggström",
        (
            "Fundus photograph of a healthy human retina",
            "A medical fundus photograph of a normal left eye: the orange-red retina with branching blood vessels "
            "spreading from the bright optic disc, and the darker macula near the centre, inside a black circular frame.",
            "retina, fundus photography, eye, ophthalmology, blood vessels, optic disc, medical imaging",
        ),
        (
            "健康人眼视网膜的眼底照片",
            "正常左眼的医学眼底照片：橙红色的视网膜上，血管从明亮的视盘向外分支延伸，中心附近是颜色较深的黄斑，四周是黑色圆形边框。",
            "视网膜，眼底摄影，眼睛，眼科，血管，视盘，医学影像",
        ),
        "Fundus photograph of normal left eye",
        kind="medical",
        keep_bytes=True,
    ),
    "rocket": Photo(
        "skimage",
        "rocket.jpg",
        "DSCOVR launch on Falcon 9",
        "public domain (SpaceX)",
        "SpaceX",
        (
            "A Falcon 9 rocket on the launch pad at dusk",
            "A SpaceX Falcon 9 rocket carrying the DSCOVR satellite stands on the launch pad at Cape Canaveral at dusk, "
            "flanked by tall lattice lightning towers, with bright floodlights glowing along the ground.",
            "rocket, Falcon 9, SpaceX, launch pad, dusk, Cape Canaveral, spaceflight",
        ),
        (
            "黄昏时发射台上的猎鹰9号火箭",
            "黄昏时分，搭载DSCOVR卫星的SpaceX猎鹰9号火箭矗立在卡纳维拉尔角的发射台上，两侧是高大的格构式避雷塔，地面上的探照灯闪闪发光。",
            "火箭，猎鹰9号，SpaceX，发射台，黄昏，卡纳维拉尔角，航天",
        ),
        "DSCOVR Falcon 9 launch",
        keep_bytes=True,
    ),
    "clock": Photo(
        "skimage",
        "clock_motion.png",
        "Motion-blurred clock",
        "public domain",
        "Stefan van der Walt",
        (
            "A motion-blurred wall clock",
            "A grayscale photograph of a round wall clock smeared horizontally by camera motion, so that its face "
            "and hands cannot be read, against a plain wall.",
            "clock, motion blur, wall, grayscale, blurry photo",
        ),
        (
            "一只因运动而模糊的挂钟",
            "一张灰度照片：墙上的圆形挂钟因相机水平移动而被拖出模糊的影子，表盘和指针都无法辨认，背景是一面素墙。",
            "时钟，运动模糊，墙，灰度，模糊照片",
        ),
        "blurry clock",
        keep_bytes=True,
        degradations=("motion_blur",),
    ),
    "brick": Photo(
        "skimage",
        "brick.png",
        "Brick wall texture",
        "CC0",
        "CC0Textures (Bricks25)",
        (
            "A brick wall seen at an angle",
            "A grayscale close-up of a wall of long, narrow bricks laid in staggered rows, seen in perspective.",
            "brick, wall, texture, pattern, grayscale",
        ),
        ("斜角拍摄的砖墙", "一张灰度近景：由细长砖块错缝砌成的墙面，带有透视效果。", "砖，墙，纹理，图案，灰度"),
        "brick texture",
        kind="texture",
    ),
    "grass": Photo(
        "skimage",
        "grass.png",
        "Grass texture",
        "CC0",
        "linolafett (DeviantArt)",
        (
            "A patch of grass seen from above",
            "A grayscale close-up of dense, short grass blades and small leaves covering the ground, photographed from above.",
            "grass, lawn, texture, nature, grayscale",
        ),
        ("俯视的一片草地", "一张灰度近景：从上方拍摄的浓密短草和小叶片覆盖着地面。", "草，草坪，纹理，自然，灰度"),
        "grass texture 01",
        kind="texture",
    ),
    "gravel": Photo(
        "skimage",
        "gravel.png",
        "Gravel texture",
        "CC0",
        "CC0Textures (Gravel04)",
        (
            "A close-up of gravel",
            "A grayscale close-up of a bed of small, angular gravel stones filling the whole frame.",
            "gravel, stones, texture, ground, grayscale",
        ),
        ("碎石的特写", "一张灰度近景：细小而有棱角的碎石铺满整个画面。", "碎石，石头，纹理，地面，灰度"),
        "gravel04",
        kind="texture",
    ),
    "moon": Photo(
        "skimage",
        "moon.png",
        "Surface of the moon",
        "distributed with scikit-image (BSD-3-Clause package; no separate notes)",
        "scikit-image",
        (
            "Grayscale close-up of the lunar surface",
            "A low-contrast grayscale image of a patch of the moon's surface with small craters and darker and lighter regions.",
            "moon, lunar surface, craters, astronomy, grayscale",
        ),
        (
            "月球表面的灰度特写",
            "一张低对比度的灰度图像：月球表面的一小块区域，有细小的陨石坑和明暗不一的区域。",
            "月球，月面，陨石坑，天文学，灰度",
        ),
        "moon surface",
        keep_bytes=True,
    ),
    "page": Photo(
        "skimage",
        "page.png",
        "Scanned page",
        "distributed with scikit-image (BSD-3-Clause package; no separate notes)",
        "scikit-image",
        (
            "A scanned page about region-based segmentation",
            'A grayscale scan of a printed page with the heading "Region-based segmentation", a paragraph of English '
            "text about marking coins and background by grey values, and a line of Python code, under uneven lighting.",
            "document, scanned page, text, image processing, tutorial, grayscale",
        ),
        (
            "一页关于基于区域的分割的扫描文档",
            "一页打印文档的灰度扫描件：标题为“Region-based segmentation”，下面是一段关于根据灰度值标记硬币和背景的英文说明和一行Python代码，光照不均匀。",
            "文档，扫描页，文字，图像处理，教程，灰度",
        ),
        "scanned page",
        kind="scan",
        keep_bytes=True,
        text_in_image="Region-based segmentation",
    ),
    "text": Photo(
        "skimage",
        "text.png",
        "Handwritten formulas (Corner.png)",
        "public domain",
        "Wikipedia (Corner.png)",
        (
            "Handwritten formulas on lined paper",
            "A grayscale photograph, taken at a steep angle, of handwritten mathematical formulas on a sheet of lined paper.",
            "handwriting, mathematics, formulas, paper, grayscale",
        ),
        ("横线纸上的手写公式", "一张以很斜的角度拍摄的灰度照片：一张横线纸上写着手写的数学公式。", "手写，数学，公式，纸张，灰度"),
        "Corner.png",
        kind="scan",
        keep_bytes=True,
    ),
    "immunohistochemistry": Photo(
        "skimage",
        "ihc.png",
        "Immunohistochemistry of colonic glands",
        "no known copyright restrictions",
        "Center for Microscopy And Molecular Imaging (CMMI)",
        (
            "Microscope image of stained colon tissue",
            "A light-microscope image of colonic glands stained by immunohistochemistry: the gland cells appear brown "
            "from DAB staining, surrounded by pale blue tissue counterstained with hematoxylin.",
            "microscopy, histology, immunohistochemistry, tissue, colon, stain, medical imaging",
        ),
        (
            "染色结肠组织的显微镜图像",
            "结肠腺体的免疫组织化学染色光学显微镜图像：腺体细胞经DAB染色呈棕色，周围是经苏木精复染的浅蓝色组织。",
            "显微镜，组织学，免疫组织化学，组织，结肠，染色，医学影像",
        ),
        "IHC staining FHL2",
        kind="microscopy",
    ),
    "motorcycle": Photo(
        "skimage",
        "motorcycle_left.png",
        "Motorcycle (Middlebury 2014 stereo, left view)",
        "research dataset distributed with scikit-image",
        "Middlebury College (Scharstein et al.)",
        (
            "A red motorcycle parked in a garage",
            "A red cruiser motorcycle with a black seat and a chrome engine parked in a cluttered garage, "
            "with shelves of cardboard boxes and a wooden bench behind it.",
            "motorcycle, red, garage, vehicle, chrome, storage shelves",
        ),
        (
            "停在车库里的一辆红色摩托车",
            "一辆红色巡航摩托车停在杂乱的车库里，黑色座椅，镀铬发动机，后面是摆满纸箱的货架和一张木长椅。",
            "摩托车，红色，车库，交通工具，镀铬，储物架",
        ),
        "motorcycle_left",
    ),
    "microaneurysms": Photo(
        "skimage",
        "microaneurysms.png",
        "Retina detail with microaneurysms (HRF database)",
        "CC0",
        "Andreas Maier",
        (
            "Grayscale close-up of retinal blood vessels",
            "A small grayscale crop of a retina photograph showing thin dark blood vessels and a few tiny dark dots, "
            "small microaneurysms, on a smooth background.",
            "retina, blood vessels, microaneurysm, medical imaging, grayscale, close-up",
        ),
        (
            "视网膜血管的灰度特写",
            "视网膜照片的一小块灰度裁剪：平滑背景上有细细的深色血管和几个微小的深色斑点，即微动脉瘤。",
            "视网膜，血管，微动脉瘤，医学影像，灰度，特写",
        ),
        "microaneurysms",
        kind="medical",
        keep_bytes=True,
    ),
    "colorwheel": Photo(
        "skimage",
        "color.png",
        "Colour wheel",
        "distributed with scikit-image (BSD-3-Clause package; no separate notes)",
        "scikit-image",
        (
            "A colour wheel on a black background",
            "A circular colour wheel in which fully saturated hues run around the edge and fade to white at the centre, "
            "on a black background.",
            "colour wheel, hue, saturation, colour spectrum, graphic",
        ),
        ("黑色背景上的色轮", "一个圆形色轮：饱和的色相沿边缘环绕一周，向中心逐渐变白，背景为黑色。", "色轮，色相，饱和度，色谱，图形"),
        "color wheel",
        kind="graphic",
        keep_bytes=True,
    ),
    "skimage_logo": Photo(
        "skimage",
        "logo.png",
        "scikit-image logo",
        "BSD-3-Clause (scikit-image)",
        "the scikit-image team",
        (
            "The scikit-image logo",
            "The circular scikit-image logo: a snake's head and scales drawn in green and orange halves, "
            "divided by a white S-shaped curve.",
            "logo, scikit-image, snake, circle, green, orange",
        ),
        (
            "scikit-image 的标志",
            "圆形的 scikit-image 标志：绿色和橙色两半中绘有蛇头和鳞片，中间由一条白色 S 形曲线分开。",
            "标志，scikit-image，蛇，圆形，绿色，橙色",
        ),
        "scikit-image logo",
        kind="graphic",
        keep_bytes=True,
    ),
    "china": Photo(
        "sklearn",
        "china.jpg",
        "Summer Palace, Beijing",
        "CC BY 2.0",
        "danielbuechele (Flickr)",
        (
            "The Tower of Buddhist Incense at the Summer Palace in Beijing",
            "The multi-tiered Tower of Buddhist Incense at the Summer Palace in Beijing, with red columns and "
            "green-and-orange glazed roofs, rising above trees on Longevity Hill, with Kunming Lake and its boats "
            "in the hazy distance.",
            "tower, Summer Palace, Beijing, Chinese architecture, Kunming Lake, landmark, travel",
        ),
        (
            "北京颐和园的佛香阁",
            "北京颐和园中多层的佛香阁：红色立柱，绿色与橙色相间的琉璃屋顶，耸立在万寿山的树丛之上，远处是薄雾中的昆明湖和湖上的船只。",
            "楼阁，颐和园，北京，中国古建筑，昆明湖，地标，旅游",
        ),
        "Summer Palace, Beijing",
        keep_bytes=True,
    ),
    "flower": Photo(
        "sklearn",
        "flower.jpg",
        "Dahlia",
        "CC BY 2.0",
        "vultilion (Flickr)",
        (
            "An orange dahlia in bloom",
            "A close-up of a round, peach-orange pompon dahlia with tightly curled petals against a dark, blurred "
            "blue-green background, with a second bloom at the bottom edge.",
            "flower, dahlia, orange, petals, garden, close-up, bokeh",
        ),
        (
            "一朵盛开的橙色大丽花",
            "一朵圆形的桃橙色绒球大丽花特写：花瓣紧密卷曲，背景是深色模糊的蓝绿色，画面底部边缘还有另一朵花。",
            "花，大丽花，橙色，花瓣，花园，特写，背景虚化",
        ),
        "dahlia",
        keep_bytes=True,
    ),
    "grace_hopper": Photo(
        "matplotlib",
        "grace_hopper.jpg",
        "Commodore Grace Hopper, U.S. Navy portrait",
        "public domain (U.S. Navy, work of the U.S. federal government)",
        "U.S. Navy",
        (
            "Portrait of Grace Hopper in naval uniform",
            "Official U.S. Navy portrait of Commodore Grace Hopper in a dark uniform and cap, wearing glasses, "
            "with service ribbons and a name tag, in front of an American flag against a blue background.",
            "Grace Hopper, portrait, U.S. Navy, uniform, computer scientist, American flag, glasses",
        ),
        (
            "身穿海军制服的格蕾丝·霍珀肖像",
            "美国海军格蕾丝·霍珀准将的官方肖像：她戴着眼镜，身穿深色制服、头戴军帽，胸前佩有勋表和姓名牌，身后是美国国旗和蓝色背景。",
            "格蕾丝·霍珀，肖像，美国海军，制服，计算机科学家，美国国旗，眼镜",
        ),
        "Grace Hopper",
        keep_bytes=True,
        text_in_image="COMO HOPPER",
    ),
    "gift": Photo(
        "matplotlib",
        "Minduka_Present_Blue_Pack.png",
        "Blue present (clip art)",
        "public domain (Open Clip Art Library)",
        "Minduka",
        (
            "A blue gift box with a silver ribbon",
            "Clip art of a bright blue wrapped present tied with a shiny silver ribbon and bow, on a transparent background.",
            "gift, present, box, ribbon, bow, blue, clip art",
        ),
        (
            "系着银色丝带的蓝色礼品盒",
            "一幅剪贴画：亮蓝色的礼品盒系着闪亮的银色丝带和蝴蝶结，背景透明。",
            "礼物，礼品盒，盒子，丝带，蝴蝶结，蓝色，剪贴画",
        ),
        "Minduka Present Blue Pack",
        kind="graphic",
        keep_bytes=True,
    ),
    "matplotlib_logo": Photo(
        "matplotlib",
        "logo2.png",
        "matplotlib logo",
        "matplotlib licence (PSF-based)",
        "the Matplotlib development team",
        (
            "The matplotlib logo",
            "The matplotlib wordmark in blue letters on a transparent background, with the letter o replaced by "
            "a small, colourful polar bar chart.",
            "logo, matplotlib, wordmark, text, Python, plotting library",
        ),
        (
            "matplotlib 的标志",
            "matplotlib 的文字标志：透明背景上的蓝色字母，字母 o 被一个彩色的小型极坐标条形图取代。",
            "标志，matplotlib，文字标志，文字，Python，绘图库",
        ),
        "matplotlib logo",
        kind="graphic",
        keep_bytes=True,
        text_in_image="matplotlib",
    ),
}

FACES = Photo(
    "skimage",
    "lfw_subset.npy",
    "Labeled Faces in the Wild (25x25 subset)",
    "research dataset distributed with scikit-image",
    "University of Massachusetts Amherst (LFW)",
    (
        "A low-resolution grayscale photo of a person's face",
        "A tightly cropped, low-resolution grayscale photograph of a human face, taken from a collection of news photos.",
        "face, portrait, person, grayscale, low resolution",
    ),
    ("一张低分辨率的人脸灰度照片", "一张裁剪紧凑、分辨率很低的人脸灰度照片，取自新闻图片集。", "人脸，肖像，人物，灰度，低分辨率"),
    "face",
)


@dataclass(frozen=True)
class TextCard:
    """An image with rendered English/Chinese text: a plain card, or text drawn onto a source photo.

    Captions come in two versions: ``*_mention`` quotes the text verbatim (so a caption/OCR
    agreement check can match it); ``*_plain`` describes the image without the text. ``None``
    plain captions mean "use the base photo's captions" (the usual web case: the caption ignores
    the overlay).
    """

    key: str
    lines: tuple[str, ...]
    en_mention: str
    zh_mention: str
    en_plain: str | None
    zh_plain: str | None
    tags_en: str
    tags_zh: str
    base: str | None = None  # key in PHOTOS, or None for a plain card
    size: tuple[int, int] = (640, 360)
    bg: str = "#ffffff"
    fg: str = "#000000"
    style: str = "card"  # card | sign | banner | meme | greeting
    extra: dict = field(default_factory=dict)


TEXT_CARDS: list[TextCard] = [
    TextCard(
        "grand_opening",
        ("GRAND OPENING", "盛大开业"),
        'A red banner reading "GRAND OPENING" and "盛大开业" in gold letters',
        "红色横幅，金色大字写着“GRAND OPENING”和“盛大开业”",
        "A red banner with gold lettering",
        "一条带有金色文字的红色横幅",
        "banner, red, gold, sign, text, celebration",
        "横幅，红色，金色，招牌，文字，庆典",
        size=(640, 360),
        bg="#c8102e",
        fg="#ffd700",
    ),
    TextCard(
        "no_parking",
        ("NO PARKING", "禁止停车"),
        'A blue sign that says "NO PARKING" with "禁止停车" below it',
        "蓝色标牌上写着“NO PARKING”和“禁止停车”",
        "A blue square traffic sign with white text",
        "一块带白色文字的蓝色方形交通标志",
        "sign, traffic sign, parking, blue, text",
        "标志，交通标志，停车，蓝色，文字",
        size=(480, 480),
        bg="#1f4e9c",
        fg="#ffffff",
        style="sign",
    ),
    TextCard(
        "sale",
        ("SALE", "50% OFF"),
        'A yellow poster announcing "SALE" and "50% OFF"',
        "黄色海报上写着“SALE”和“50% OFF”",
        "A bright yellow shop poster with bold black letters",
        "一张带有黑色粗体字的亮黄色商店海报",
        "poster, sale, discount, yellow, shop, text",
        "海报，促销，折扣，黄色，商店，文字",
        size=(600, 300),
        bg="#ffd200",
        fg="#111111",
    ),
    TextCard(
        "special",
        ("今日特价", "每杯十五元"),
        'A green chalkboard sign reading "今日特价" (today\'s special) and "每杯十五元" (15 yuan a cup)',
        "绿色黑板上写着“今日特价”和“每杯十五元”",
        "A green chalkboard sign with white Chinese writing",
        "一块写着白色中文的绿色黑板招牌",
        "chalkboard, sign, cafe, price, Chinese text",
        "黑板，招牌，咖啡馆，价格，中文",
        size=(400, 300),
        bg="#234d32",
        fg="#f4f1e8",
    ),
    TextCard(
        "hello",
        ("Hello, world!", "你好，世界！"),
        'A dark banner with the greeting "Hello, world!" and "你好，世界！"',
        "深色横幅上用中英文写着“Hello, world!”和“你好，世界！”",
        "A dark horizontal banner with two lines of light text",
        "一条有两行浅色文字的深色横幅",
        "banner, greeting, programming, text, dark background",
        "横幅，问候，编程，文字，深色背景",
        size=(800, 200),
        bg="#1e1e2e",
        fg="#cdd6f4",
        style="banner",
    ),
    TextCard(
        "menu",
        ("MENU 菜单", "Espresso 浓缩咖啡 18", "Latte 拿铁 25", "Green tea 绿茶 15"),
        'A cafe menu board headed "MENU 菜单" listing espresso, latte and green tea with prices',
        "咖啡馆菜单板，标题为“MENU 菜单”，列出浓缩咖啡、拿铁和绿茶的价格",
        "A dark brown menu board with four lines of cream-coloured text",
        "一块深棕色菜单板，上面有四行米色文字",
        "menu, cafe, coffee, tea, prices, bilingual",
        "菜单，咖啡馆，咖啡，茶，价格，双语",
        size=(360, 540),
        bg="#3b2416",
        fg="#f5e6c8",
    ),
    TextCard(
        "exit",
        ("EXIT 出口",),
        'A green emergency exit sign reading "EXIT 出口"',
        "绿色的安全出口标志，写着“EXIT 出口”",
        "A green rectangular sign with white text",
        "一块带白色文字的绿色长方形标志",
        "sign, exit, emergency, green, text",
        "标志，出口，紧急，绿色，文字",
        size=(500, 200),
        bg="#00843d",
        fg="#ffffff",
        style="sign",
    ),
    TextCard(
        "coffee_banner",
        ("Fresh Coffee 新鲜咖啡",),
        'A cup of espresso on a red saucer with the caption "Fresh Coffee 新鲜咖啡"',
        "红色茶托上的一杯浓缩咖啡，配有文字“Fresh Coffee 新鲜咖啡”",
        None,
        None,
        "coffee, espresso, cup, advertisement, text",
        "咖啡，浓缩咖啡，杯子，广告，文字",
        base="coffee",
        style="banner",
        fg="#ffffff",
    ),
    TextCard(
        "birthday",
        ("HAPPY BIRTHDAY", "生日快乐"),
        'A birthday card with a blue gift box and the words "HAPPY BIRTHDAY" and "生日快乐"',
        "一张生日贺卡，上面有蓝色礼品盒和“HAPPY BIRTHDAY”“生日快乐”字样",
        "A greeting card with a blue gift box tied with a silver ribbon",
        "一张印有系着银色丝带的蓝色礼品盒的贺卡",
        "birthday card, gift, present, greeting, text",
        "生日贺卡，礼物，礼品，问候，文字",
        base="gift",
        size=(480, 360),
        bg="#fff4e0",
        fg="#c2185b",
        style="greeting",
    ),
    TextCard(
        "launch_day",
        ("LAUNCH DAY",),
        'A Falcon 9 rocket on the launch pad at dusk with the words "LAUNCH DAY" at the top',
        "黄昏时发射台上的猎鹰9号火箭，上方写着“LAUNCH DAY”",
        None,
        None,
        "rocket, launch, dusk, poster, text",
        "火箭，发射，黄昏，海报，文字",
        base="rocket",
        style="title",
        fg="#ffffff",
    ),
    TextCard(
        "welcome_beijing",
        ("欢迎来到北京",),
        'The Tower of Buddhist Incense in Beijing with the greeting "欢迎来到北京" (welcome to Beijing) in the sky',
        "北京颐和园的佛香阁，天空处写着“欢迎来到北京”",
        None,
        None,
        "Beijing, Summer Palace, travel poster, Chinese text",
        "北京，颐和园，旅游海报，中文",
        base="china",
        style="title",
        fg="#8b0000",
    ),
    TextCard(
        "cat_meme",
        ("MONDAY AGAIN?", "又是星期一？"),
        'A tabby cat meme with the text "MONDAY AGAIN?" and "又是星期一？"',
        "一张虎斑猫表情包，配文“MONDAY AGAIN?”和“又是星期一？”",
        None,
        None,
        "meme, cat, Monday, humour, text",
        "表情包，猫，星期一，幽默，文字",
        base="chelsea",
        style="meme",
        fg="#ffffff",
    ),
]

WATERMARKS = ("© Demo Stock", "SAMPLE 样张", "版权所有 Photo Co.")
"""Visible watermark texts stamped on some near-duplicates (captions never mention them)."""
