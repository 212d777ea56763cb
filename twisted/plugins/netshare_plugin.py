from twisted.application.service import ServiceMaker

netshare = ServiceMaker(
    "netshare",
    "netshare.tap",
    "netshare: personnel sync, file sharing and hashtag messaging over line protocols",
    "netshare",
)
